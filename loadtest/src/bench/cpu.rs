//! CPU time over a phase, read from `/proc` (Linux; elsewhere the figures
//! are absent): this client, the engine, Redis (`redis-server`), Postgres
//! (every `postgres` process), processes named with `--watch-pid` (one
//! Redis Cluster master each, say) and whatever else ran on the box.

use serde::Serialize;

/// Kernel clock ticks per second (`getconf CLK_TCK`; 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// CPU ticks of the watched processes and of the box, at one instant.
#[derive(Debug, Clone)]
pub struct CpuSample {
    at: std::time::Instant,
    client: Option<u64>,
    engine: Option<u64>,
    redis: u64,
    postgres: u64,
    /// Ticks of each watched process (`--watch-pid`), in its order.
    watched: Vec<Option<u64>>,
    /// (busy, total) ticks over all CPUs.
    machine: Option<(u64, u64)>,
}

/// CPU use over a phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuUse {
    /// CPU seconds per wall second (1.0 = one core busy).
    pub client_cores: Option<f64>,
    pub engine_cores: Option<f64>,
    pub redis_cores: Option<f64>,
    pub postgres_cores: Option<f64>,
    /// Everything else that ran on the box (other work disturbs the figures).
    pub other_cores: Option<f64>,
    /// Share of all CPUs busy (everything on the box).
    pub machine_busy_pct: Option<f64>,
    /// CPU µs per counted request, per process (the cost table).
    pub client_us_per_request: Option<f64>,
    pub engine_us_per_request: Option<f64>,
    pub redis_us_per_request: Option<f64>,
    pub postgres_us_per_request: Option<f64>,
    pub other_us_per_request: Option<f64>,
    /// Each `--watch-pid` process (already inside the sums above).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub watched: Vec<WatchedCpu>,
}

/// One watched process over a phase.
#[derive(Debug, Clone, Serialize)]
pub struct WatchedCpu {
    pub name: String,
    pub pid: u32,
    /// utime + stime over the phase, in clock ticks (`getconf CLK_TCK`);
    /// absent when /proc could not be read at either end.
    pub ticks: Option<u64>,
    pub cores: Option<f64>,
    pub us_per_request: Option<f64>,
}

impl CpuSample {
    /// Reads /proc now; what cannot be read stays absent.
    pub fn take(engine_pid: Option<u32>, watch: &[(String, u32)]) -> Self {
        let (redis, postgres) = services_ticks();
        let watched = watch
            .iter()
            .map(|(_, pid)| process_ticks(&format!("/proc/{pid}/stat")))
            .collect();
        Self {
            at: std::time::Instant::now(),
            client: process_ticks("/proc/self/stat"),
            engine: engine_pid.and_then(|pid| process_ticks(&format!("/proc/{pid}/stat"))),
            redis,
            postgres,
            watched,
            machine: machine_ticks(),
        }
    }
}

impl CpuUse {
    /// The use between two samples, `requests` requests apart.
    /// `watch` names the watched processes of both samples.
    pub fn between(a: &CpuSample, b: &CpuSample, requests: u64, watch: &[(String, u32)]) -> Self {
        let wall = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
        let secs =
            |x: Option<u64>, y: Option<u64>| Some(y?.saturating_sub(x?) as f64 / TICKS_PER_SEC);
        let per_req = |cpu: Option<f64>| {
            cpu.filter(|_| requests > 0)
                .map(|c| c * 1e6 / requests as f64)
        };
        let client = secs(a.client, b.client);
        let engine = secs(a.engine, b.engine);
        let redis = secs(Some(a.redis), Some(b.redis));
        let postgres = secs(Some(a.postgres), Some(b.postgres));
        let (machine_pct, busy_secs) = match (a.machine, b.machine) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                // Ticks summed over all CPUs: busy / TICKS_PER_SEC is CPU seconds.
                let busy = b1.saturating_sub(b0) as f64;
                (
                    Some(100.0 * busy / (t1 - t0) as f64),
                    Some(busy / TICKS_PER_SEC),
                )
            }
            _ => (None, None),
        };
        let known = client.unwrap_or(0.0)
            + engine.unwrap_or(0.0)
            + redis.unwrap_or(0.0)
            + postgres.unwrap_or(0.0);
        let other = busy_secs.map(|busy| (busy - known).max(0.0));
        let cores = |x: Option<f64>| x.map(|c| c / wall);
        let watched = watch
            .iter()
            .zip(a.watched.iter().zip(&b.watched))
            .map(|((name, pid), (x, y))| {
                let ticks = x.zip(*y).map(|(x, y)| y.saturating_sub(x));
                let cpu = ticks.map(|t| t as f64 / TICKS_PER_SEC);
                WatchedCpu {
                    name: name.clone(),
                    pid: *pid,
                    ticks,
                    cores: cores(cpu),
                    us_per_request: per_req(cpu),
                }
            })
            .collect();
        Self {
            client_cores: cores(client),
            engine_cores: cores(engine),
            redis_cores: cores(redis),
            postgres_cores: cores(postgres),
            other_cores: cores(other),
            machine_busy_pct: machine_pct,
            client_us_per_request: per_req(client),
            engine_us_per_request: per_req(engine),
            redis_us_per_request: per_req(redis),
            postgres_us_per_request: per_req(postgres),
            other_us_per_request: per_req(other),
            watched,
        }
    }
}

/// utime + stime of a process, in ticks.
fn process_ticks(path: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    parse_process_ticks(&text)
}

/// Summed ticks of every `redis-server` and every `postgres` process.
fn services_ticks() -> (u64, u64) {
    let (mut redis, mut postgres) = (0, 0);
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return (0, 0);
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let comm = text
            .find('(')
            .zip(text.rfind(')'))
            .map_or("", |(a, b)| &text[a + 1..b]);
        let slot = match comm {
            "redis-server" => &mut redis,
            "postgres" => &mut postgres,
            _ => continue,
        };
        *slot += parse_process_ticks(&text).unwrap_or(0);
    }
    (redis, postgres)
}

fn parse_process_ticks(text: &str) -> Option<u64> {
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn machine_ticks() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    parse_machine_ticks(&text)
}

fn parse_machine_ticks(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is inside user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc() {
        let stat = "1234 (tokio (rt) x) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 4";
        assert_eq!(parse_process_ticks(stat), Some(300));
        let machine = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n";
        assert_eq!(parse_machine_ticks(machine), Some((150, 1000)));
    }
}
