//! Two engines behind HAProxy (Debian's `haproxy`, started here on a
//! loopback port with a generated config, the one README's "Operating it"
//! shows):
//! each shopper behind the balancer gets their own per-IP budget (the
//! engines trust the balancer's `X-Forwarded-For`, and only its hop), and
//! killing an engine loses no request (health checks and redispatch).

use std::{
    net::IpAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use reqwest::StatusCode;

use crate::rig::{free_port, Rig};

/// The HAProxy configuration README's "Behind a balancer" recommends,
/// pointed at the test's engines. `balance` is its `balance source` (each
/// shopper sticks to one engine) or, for tests whose shoppers all come from
/// one address, `roundrobin`. `check_timeout`: how long a health check may
/// take (unset: HAProxy allows the 200 ms `inter`, which a debug engine
/// under a full crowd on two cores overruns, and is marked DOWN).
fn haproxy_config(
    port: u16,
    engines: &[u16],
    balance: Balance,
    check_timeout: Option<Duration>,
) -> String {
    let servers: String = engines
        .iter()
        .enumerate()
        .map(|(i, p)| format!("    server engine{} 127.0.0.1:{p} check\n", i + 1))
        .collect();
    format!(
        r#"global
    maxconn 2000

defaults
    mode http
    timeout connect 1s
    timeout client 15s
    timeout server 15s
    # Append the shopper's address to X-Forwarded-For: the engines trust
    # this hop (SECKILL_TRUSTED_PROXIES) and key their per-IP limit on it.
    option forwardfor
    # A dead engine: try another one. A purchase is never sent twice:
    # POSTs are retried only when the connection failed (nothing was sent).
    retries 3
    option redispatch 1
    retry-on all-retryable-errors

frontend shoppers
    bind 127.0.0.1:{port}
    http-request disable-l7-retry if METH_POST
    default_backend engines

backend engines
{balance}    option httpchk GET /readyz
    http-check expect status 200
{check_timeout}    default-server inter 200ms fall 2 rise 1
    http-response set-header x-served-by %s
{servers}"#,
        balance = match balance {
            Balance::Source => {
                "    # Each shopper sticks to one engine, so the engine's per-IP limit is
    # the whole budget (round robin would give each shopper one per engine).
    balance source
    hash-type consistent
"
            }
            Balance::RoundRobin => "    balance roundrobin\n",
        },
        check_timeout = check_timeout.map_or(String::new(), |t| format!(
            "    timeout check {}ms\n",
            t.as_millis()
        )),
    )
}

/// How HAProxy spreads requests over the engines.
#[derive(Clone, Copy, Debug)]
pub enum Balance {
    /// By client address (the recommended set-up).
    Source,
    /// Request by request (one client address, several engines busy).
    RoundRobin,
}

/// A `haproxy` child on a loopback port, killed on drop.
pub struct HaProxy {
    child: Child,
    port: u16,
}

impl HaProxy {
    fn start(dir: &Path, engines: &[u16]) -> Self {
        Self::start_balanced(dir, engines, Balance::Source, None)
    }

    pub fn start_balanced(
        dir: &Path,
        engines: &[u16],
        balance: Balance,
        check_timeout: Option<Duration>,
    ) -> Self {
        let port = free_port();
        let config = dir.join("haproxy.cfg");
        std::fs::write(
            &config,
            haproxy_config(port, engines, balance, check_timeout),
        )
        .unwrap();
        let binary = ["haproxy", "/usr/sbin/haproxy"]
            .into_iter()
            .find(|b| Command::new(b).arg("-v").output().is_ok())
            .expect("haproxy installed (make test runs scripts/ensure-tools.sh haproxy:haproxy)");
        let check = Command::new(binary)
            .args(["-c", "-f"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(check.status.success(), "haproxy -c: {check:?}");
        let log = std::fs::File::create(dir.join("haproxy.log")).unwrap();
        let child = Command::new(binary)
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start haproxy");
        Self { child, port }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A shopper with an address of their own (127.0.0.x is all loopback).
fn shopper(addr: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(addr.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Purchase attempts of an event that does not exist through the
/// balancer: 404 within the per-IP budget (checked before the event is
/// looked up), 429 over it.
async fn attempts(
    client: &reqwest::Client,
    lb: &HaProxy,
    n: usize,
    xff: Option<&str>,
) -> (usize, usize) {
    let (mut allowed, mut limited) = (0, 0);
    for _ in 0..n {
        let mut request = client
            .post(lb.url("/api/events/999999/purchase"))
            .header("content-type", "application/json")
            .body(r#"{"quantity":1}"#);
        if let Some(xff) = xff {
            request = request.header("x-forwarded-for", xff);
        }
        match request.send().await.unwrap().status() {
            StatusCode::NOT_FOUND => allowed += 1,
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            other => panic!("unexpected {other}"),
        }
    }
    (allowed, limited)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shoppers_behind_haproxy_get_their_own_budget_and_an_engine_can_die() {
    let mut rig = Rig::new("balancer").await;
    let behind_the_balancer = [
        ("SECKILL_TRUSTED_PROXIES", "127.0.0.1/32"),
        ("SECKILL_RATE_IP_RPS", "1"),
        ("SECKILL_RATE_IP_BURST", "5"),
    ];
    rig.start_engine(&behind_the_balancer).await;
    rig.start_engine(&behind_the_balancer).await;
    let event = rig.open_sale(10, 10).await;
    let ports: Vec<u16> = rig.engines.iter().map(|e| e.port).collect();
    let lb = HaProxy::start(&rig.dir, &ports);

    let watcher = shopper("127.0.0.9");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !watcher
        .get(lb.url("/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == StatusCode::OK)
    {
        assert!(Instant::now() < deadline, "haproxy never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Two shoppers behind one balancer: a budget of 5 each, not 5 shared.
    let (a, b) = (shopper("127.0.0.2"), shopper("127.0.0.3"));
    assert_eq!(attempts(&a, &lb, 7, None).await, (5, 2), "shopper A");
    assert_eq!(attempts(&b, &lb, 7, None).await, (5, 2), "shopper B");
    // A's own X-Forwarded-For claim is left of the balancer's hop: ignored.
    assert_eq!(
        attempts(&a, &lb, 2, Some("198.51.100.77")).await,
        (0, 2),
        "a forged header buys no fresh budget"
    );

    // Failover: kill the engine serving shopper C; C's requests go on.
    let c = shopper("127.0.0.4");
    let page = lb.url(&format!("/api/events/{event}"));
    let served_by = |r: &reqwest::Response| {
        r.headers()["x-served-by"]
            .to_str()
            .unwrap()
            .trim_start_matches("engine")
            .parse::<usize>()
            .unwrap()
            - 1
    };
    let first = c.get(&page).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let victim = served_by(&first);
    rig.engines[victim].kill9();
    let mut survivors = 0;
    for i in 0..40 {
        let r = c
            .get(&page)
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {i} after the kill: {e}"));
        assert_eq!(r.status(), StatusCode::OK, "request {i} after the kill");
        assert_ne!(
            served_by(&r),
            victim,
            "request {i} served by the dead engine"
        );
        survivors += 1;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(survivors, 40);
    // And the survivor still limits per shopper (C has its own budget).
    assert_eq!(
        attempts(&c, &lb, 6, None).await,
        (5, 1),
        "shopper C on the survivor"
    );
    drop(lb);
    rig.finish().await;
}
