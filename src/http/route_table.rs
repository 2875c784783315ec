//! The router as a table: every route is registered through it, and it
//! remembers each full path, so a test holds the OpenAPI document to every
//! route the engine serves (a new route without documentation fails it).

use axum::{routing::MethodRouter, Router};

use crate::state::AppState;

pub struct RouteTable {
    prefix: &'static str,
    router: Router<AppState>,
    paths: Vec<String>,
}

impl RouteTable {
    /// Routes that will be served under `prefix` (`""` for the root).
    pub fn new(prefix: &'static str) -> Self {
        Self {
            prefix,
            router: Router::new(),
            paths: Vec::new(),
        }
    }

    pub fn route(mut self, path: &str, method_router: MethodRouter<AppState>) -> Self {
        self.paths.push(format!("{}{path}", self.prefix));
        self.router = self.router.route(path, method_router);
        self
    }

    /// Serves `table` under its own prefix.
    pub fn nest(mut self, table: RouteTable) -> Self {
        self.paths.extend(
            table
                .paths
                .iter()
                .map(|path| format!("{}{path}", self.prefix)),
        );
        self.router = self.router.nest(table.prefix, table.router);
        self
    }

    /// Every full path registered, in the order given (templates as axum
    /// spells them: `/api/events/{id}`).
    pub fn paths(&self) -> &[String] {
        &self.paths
    }

    pub fn into_router(self) -> Router<AppState> {
        self.router
    }
}
