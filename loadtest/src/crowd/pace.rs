//! When a worker sends its next attempt. Closed loop: at once, until the
//! run's deadline. Open model: at the attempt's due time in the schedule,
//! whether or not the engine kept up; a worker that takes an attempt more
//! than the allowed lag after its due time (every connection was busy)
//! drops it rather than send it late, as k6's arrival-rate executors drop
//! iterations when no VU is free.
//!
//! Tokio's timer rounds a deadline up to the next millisecond, so a worker
//! asks to wake [`TIMER_SLACK`] early: an on-time request leaves at most
//! that much before its due time and its latency counts from the send, while
//! a late one counts from its due time. The timer's slop is thus never
//! charged to the engine, and real lateness always is.

use std::time::{Duration, Instant};

use crate::{plan::Plan, schedule::Schedule};

/// The timer's resolution.
const TIMER_SLACK: Duration = Duration::from_millis(1);

/// How the crowd is paced.
pub(super) enum Pace<'a> {
    Closed {
        deadline: Instant,
    },
    Open {
        t0: Instant,
        schedule: &'a Schedule,
        max_lag: Duration,
    },
}

/// What a worker does with the attempt of one ticket.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Turn {
    /// Send it; latency counts from this instant: the earlier of its due
    /// time and now, so that time waiting for a free connection is not
    /// hidden.
    Send(Instant),
    /// Do not send it: it was due at this instant, longer ago than allowed.
    Drop(Instant),
    /// The run is over.
    Stop,
}

impl<'a> Pace<'a> {
    /// The pace of `plan`'s crowd, started at `t0`.
    pub(super) fn of(plan: &'a Plan, t0: Instant) -> Self {
        match &plan.schedule {
            None => Pace::Closed {
                deadline: t0 + Duration::from_secs(plan.knobs.duration_secs),
            },
            Some(schedule) => Pace::Open {
                t0,
                schedule,
                max_lag: Duration::from_millis(plan.max_lag_ms),
            },
        }
    }

    /// Waits until the attempt starting at request `ticket` is due.
    pub(super) async fn wait(&self, ticket: u64) -> Turn {
        match *self {
            Pace::Closed { deadline } => {
                let now = Instant::now();
                if now >= deadline {
                    Turn::Stop
                } else {
                    Turn::Send(now)
                }
            }
            Pace::Open {
                t0,
                schedule,
                max_lag,
            } => {
                let Some(due) = schedule.due(ticket).map(|d| t0 + d) else {
                    return Turn::Stop;
                };
                // Tokio's clock, so that a test can move it.
                let due = tokio::time::Instant::from_std(due);
                tokio::time::sleep_until(due.checked_sub(TIMER_SLACK).unwrap_or(due)).await;
                let now = tokio::time::Instant::now();
                if now.saturating_duration_since(due) > max_lag {
                    Turn::Drop(due.into_std())
                } else {
                    Turn::Send(due.min(now).into_std())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn open_pace_waits_for_the_due_time_and_drops_the_late() {
        let schedule = Schedule::constant(10, 2).unwrap();
        let t0 = tokio::time::Instant::now().into_std();
        let pace = Pace::Open {
            t0,
            schedule: &schedule,
            max_lag: Duration::from_millis(250),
        };
        // On time: the worker wakes 1 ms before 0.5 s and sends at once.
        assert_eq!(
            pace.wait(5).await,
            Turn::Send(t0 + Duration::from_millis(499))
        );
        // The clock is now at 0.499 s: ticket 3 (due 0.3 s) is 199 ms late,
        // sent, its latency counted from 0.3 s; ticket 2 (due 0.2 s) is 299 ms
        // late, dropped.
        assert_eq!(
            pace.wait(3).await,
            Turn::Send(t0 + Duration::from_millis(300))
        );
        assert_eq!(
            pace.wait(2).await,
            Turn::Drop(t0 + Duration::from_millis(200))
        );
        assert_eq!(pace.wait(20).await, Turn::Stop);
    }
}
