//! `stalls`: a probe of the machine rather than of the engine. It sleeps a
//! short period in a loop and prints every wakeup that came later than a
//! threshold, with the wall-clock time (µs since the epoch) it happened.
//!
//! Pinned to one CPU at a real-time priority above the process under test
//! (`taskset -c N chrt -f 20 seckill-loadtest stalls --label cpuN`), a late
//! wakeup cannot come from a user-space task of this machine: the probe
//! preempts them all. It is late when that CPU did not run at all (the
//! hypervisor ran something else on it: steal time) or its kernel would not
//! switch (a non-preemptible kernel section). A command in a real-time
//! Redis on that CPU stalls by as much at the same instant, and the slow log
//! charges it to the command: `scripts/bench-bigsale.sh` sets the two side
//! by side.

use std::{
    io::Write,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crate::cli::{Exit, StallArgs};

/// Runs until killed (or stdout closes).
pub fn run(args: &StallArgs) -> anyhow::Result<Exit> {
    let period = Duration::from_micros(args.period_us);
    let mut out = std::io::stdout().lock();
    loop {
        let start = Instant::now();
        std::thread::sleep(period);
        let late = start.elapsed().saturating_sub(period).as_micros();
        if late > u128::from(args.threshold_us) {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_micros();
            writeln!(out, "{now} {} {late}", args.label)?;
            out.flush()?;
        }
    }
}
