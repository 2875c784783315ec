//! Request rate limits (governor): one for the whole process, one per
//! client IP, one per shopper. Keyed state is pruned periodically so memory
//! stays bounded however many distinct users arrive.

use std::{net::IpAddr, num::NonZeroU32, time::Duration};

use governor::{
    clock::{Clock, DefaultClock},
    DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter,
};

use crate::config::RateSettings;

/// Every limiter of the process; a `None` limiter is switched off.
pub struct RateLimits {
    global: Option<DefaultDirectRateLimiter>,
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    per_user: Option<DefaultKeyedRateLimiter<i64>>,
    clock: DefaultClock,
}

/// Denied: try again after this long.
#[derive(Debug, Clone, Copy)]
pub struct Limited {
    pub retry_after: Duration,
}

fn quota(rps: u32, burst: u32) -> Option<Quota> {
    let rps = NonZeroU32::new(rps)?;
    let burst = NonZeroU32::new(burst).unwrap_or(rps);
    Some(Quota::per_second(rps).allow_burst(burst))
}

impl RateLimits {
    pub fn new(rate: RateSettings) -> Self {
        Self {
            global: quota(rate.global_rps, rate.global_rps).map(RateLimiter::direct),
            per_ip: quota(rate.ip_rps, rate.ip_burst).map(RateLimiter::keyed),
            per_user: quota(rate.user_rps, rate.user_burst).map(RateLimiter::keyed),
            clock: DefaultClock::default(),
        }
    }

    fn limited(&self, not_until: governor::NotUntil<<DefaultClock as Clock>::Instant>) -> Limited {
        Limited {
            retry_after: not_until.wait_time_from(self.clock.now()),
        }
    }

    /// The process-wide purchase budget.
    pub fn check_global(&self) -> Result<(), Limited> {
        match &self.global {
            Some(l) => l.check().map_err(|n| self.limited(n)),
            None => Ok(()),
        }
    }

    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Limited> {
        match &self.per_ip {
            Some(l) => l.check_key(&ip).map_err(|n| self.limited(n)),
            None => Ok(()),
        }
    }

    pub fn check_user(&self, user_id: i64) -> Result<(), Limited> {
        match &self.per_user {
            Some(l) => l.check_key(&user_id).map_err(|n| self.limited(n)),
            None => Ok(()),
        }
    }

    /// Drops keyed state that has refilled completely (indistinguishable from
    /// a fresh key) and returns memory to the allocator.
    pub fn evict_idle(&self) {
        if let Some(l) = &self.per_ip {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.per_user {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// Keys currently tracked (ip, user).
    pub fn tracked_keys(&self) -> (usize, usize) {
        (
            self.per_ip.as_ref().map_or(0, |l| l.len()),
            self.per_user.as_ref().map_or(0, |l| l.len()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(user_rps: u32, user_burst: u32) -> RateLimits {
        RateLimits::new(RateSettings {
            global_rps: 0,
            user_rps,
            user_burst,
            ip_rps: 0,
            ip_burst: 0,
        })
    }

    #[test]
    fn per_user_burst_then_denied_with_retry_after() {
        let l = limits(1, 3);
        for _ in 0..3 {
            assert!(l.check_user(7).is_ok());
        }
        let denied = l.check_user(7).unwrap_err();
        assert!(
            denied.retry_after > Duration::ZERO && denied.retry_after <= Duration::from_secs(1)
        );
        assert!(l.check_user(8).is_ok(), "other users are unaffected");
    }

    #[test]
    fn zero_means_off() {
        let l = limits(0, 0);
        for _ in 0..10_000 {
            assert!(l.check_user(1).is_ok());
        }
        assert_eq!(l.tracked_keys(), (0, 0));
    }

    #[test]
    fn eviction_bounds_keyed_state() {
        let l = limits(1000, 1);
        for user in 0..50_000 {
            let _ = l.check_user(user);
        }
        assert_eq!(l.tracked_keys().1, 50_000);
        std::thread::sleep(Duration::from_millis(20));
        l.evict_idle();
        assert_eq!(l.tracked_keys().1, 0, "refilled keys are evicted");
    }
}
