//! The stock poller: the admin event read every [`POLL_EVERY`] while the
//! crowd fires, for the report and the chart.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::watch;

use crate::api::{AdminEvent, Api};

/// How often the stock is polled: ten points a second on the chart, for a
/// few cheap operator reads beside thousands of purchases.
pub const POLL_EVERY: Duration = Duration::from_millis(100);

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

/// Polls the admin event every [`POLL_EVERY`] until `stop` turns true; a failed
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
    let mut tick = tokio::time::interval_at((t0 + POLL_EVERY).into(), POLL_EVERY);
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

/// When the writers had persisted every acknowledged order: the first poll
/// at or after `last_accept_secs` (the last 202) that saw nothing pending.
pub fn drained_at(points: &[StockPoint], last_accept_secs: f64) -> Option<f64> {
    points
        .iter()
        .find(|p| p.t_secs >= last_accept_secs && p.pending == 0)
        .map(|p| p.t_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drained_at_is_the_first_empty_poll_after_the_last_202() {
        let p = |t_secs, pending| StockPoint {
            t_secs,
            stock_left: 0,
            sold: 0,
            pending,
            failed: 0,
        };
        let points = [p(0.0, 0), p(0.1, 500), p(0.2, 0), p(0.3, 40), p(0.4, 0)];
        assert_eq!(drained_at(&points, 0.25), Some(0.4));
        assert_eq!(drained_at(&points, 0.45), None);
    }
}
