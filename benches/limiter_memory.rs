//! Keyed rate-limiter memory: resident set size of this process after one
//! request from each of 1 000 000 distinct users, and after the periodic
//! eviction the engine runs (`RateLimits::evict_idle`).

use std::time::{Duration, Instant};

use seckill::{config::RateSettings, ratelimit::RateLimits};

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    const USERS: i64 = 1_000_000;
    // The engine's defaults: 5 rps, burst 10 per user.
    let limits = RateLimits::new(RateSettings {
        global_rps: 0,
        user_rps: 5,
        user_burst: 10,
        ip_rps: 0,
        ip_burst: 0,
    });
    let before = rss_kib();
    let started = Instant::now();
    for user in 1..=USERS {
        assert!(limits.check_user(user).is_ok());
    }
    let per_check_ns = started.elapsed().as_nanos() as f64 / USERS as f64;
    let filled = rss_kib();
    let (_, tracked) = limits.tracked_keys();
    // A key is evictable once its bucket has refilled: burst 10 at 5/s = 2 s.
    std::thread::sleep(Duration::from_millis(2_100));
    limits.evict_idle();
    let evicted = rss_kib();
    let (_, left) = limits.tracked_keys();
    println!("keyed rate limiter, {USERS} distinct users (5 rps, burst 10):");
    println!("  check                 {per_check_ns:>8.0} ns per new key");
    println!("  keys tracked          {tracked:>8} after the crowd, {left} after eviction");
    println!("  process RSS           {:>8} KiB before, {:>8} KiB with 1M keys (+{} KiB, {:.0} B/key), {:>8} KiB after eviction", before, filled, filled.saturating_sub(before), (filled.saturating_sub(before) * 1024) as f64 / USERS as f64, evicted);
    println!(
        "  SPEC §7 limiter memory bounded (old keys evicted): {}",
        if left == 0 { "MET" } else { "NOT MET" }
    );
    println!("LIMITER_JSON {{\"users\": {USERS}, \"rss_before_kib\": {before}, \"rss_filled_kib\": {filled}, \"rss_after_eviction_kib\": {evicted}, \"keys_after_eviction\": {left}}}");
    assert_eq!(tracked, USERS as usize);
    assert_eq!(left, 0, "eviction drops every refilled key");
}
