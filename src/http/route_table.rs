//! The router as a table: every route is registered through it, and it
//! remembers each full path, so a test holds the OpenAPI document to every
//! route the engine serves (a new route without documentation fails it).

use axum::{routing::MethodRouter, Router};

use crate::state::AppState;

pub struct RouteTable {
    prefix: &'static str,
    /// Full path and its handlers, in the order given.
    routes: Vec<(String, MethodRouter<AppState>)>,
}

impl RouteTable {
    /// Routes that will be served under `prefix` (`""` for the root).
    pub fn new(prefix: &'static str) -> Self {
        Self {
            prefix,
            routes: Vec::new(),
        }
    }

    pub fn route(mut self, path: &str, method_router: MethodRouter<AppState>) -> Self {
        self.routes
            .push((format!("{}{path}", self.prefix), method_router));
        self
    }

    /// Serves `table` under its own prefix. The router gets every route at
    /// its full path (one flat table, not nested routers): a request is
    /// matched once, with no prefix stripped and no path rebuilt per request.
    pub fn nest(mut self, table: RouteTable) -> Self {
        self.routes.extend(
            table
                .routes
                .into_iter()
                .map(|(path, method_router)| (format!("{}{path}", self.prefix), method_router)),
        );
        self
    }

    /// Every full path registered, in the order given (templates as axum
    /// spells them: `/api/events/{id}`).
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.routes.iter().map(|(path, _)| path.as_str())
    }

    pub fn into_router(self) -> Router<AppState> {
        self.routes
            .into_iter()
            .fold(Router::new(), |router, (path, method_router)| {
                router.route(&path, method_router)
            })
    }
}
