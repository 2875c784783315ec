//! The stock poller: the admin event read once a second while the crowd
//! fires, for the report and the chart.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::watch;

use crate::api::{AdminEvent, Api};

/// Stock and drain figures of one poll.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct StockPoint {
    /// Seconds after the sale started (negative: before it).
    pub t_secs: f64,
    pub stock_left: i64,
    pub sold: i64,
    pub pending: i64,
    pub failed: i64,
}

impl StockPoint {
    /// The figures of `ev`, `t_secs` after the start.
    pub fn of(ev: &AdminEvent, t_secs: f64) -> Self {
        Self {
            t_secs,
            stock_left: ev.stock_left,
            sold: ev.sold,
            pending: ev.pending,
            failed: ev.failed,
        }
    }
}

/// Polls the admin event once a second until `stop` turns true; a failed
/// poll is skipped (the engine may be busy), not fatal. `before` is a poll
/// made just before the start, shown at t = 0.
pub async fn poll_stock(
    api: Arc<Api>,
    event_id: i64,
    t0: Instant,
    before: Option<StockPoint>,
    mut stop: watch::Receiver<bool>,
) -> Vec<StockPoint> {
    let mut points: Vec<StockPoint> = before.into_iter().collect();
    let first = t0 + Duration::from_secs(1);
    let mut tick = tokio::time::interval_at(first.into(), Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
        let asked = Instant::now();
        if let Ok(ev) = api.event(event_id).await {
            let t = asked.saturating_duration_since(t0).as_secs_f64();
            points.push(StockPoint::of(&ev, t));
        }
    }
    points
}
