//! Waiting for the engine's writers: a purchase is acknowledged before it is
//! persisted, so figures are read only once an event has no pending orders.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::api::{AdminEvent, Api};

/// How the drain went.
#[derive(Debug, Clone, Serialize)]
pub struct Drain {
    pub drained: bool,
    /// From the last answer to `pending` = 0 (or to giving up).
    pub secs: f64,
    pub event: AdminEvent,
}

/// Polls the admin event until `pending` is 0 or `timeout` passes.
pub async fn wait_for_drain(api: &Api, event_id: i64, timeout: Duration) -> anyhow::Result<Drain> {
    let started = Instant::now();
    loop {
        let event = api.event(event_id).await?;
        let drained = event.pending == 0;
        if drained || started.elapsed() >= timeout {
            return Ok(Drain {
                drained,
                secs: started.elapsed().as_secs_f64(),
                event,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
