//! Redis Cluster mode (SPEC §8): a real three-node cluster on spare loopback
//! ports, the engine on a `redis-cluster://` URL, a concurrent sale on events
//! whose hash tags live on different nodes.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{all, spawn_app_env};

/// Three cluster-enabled redis-server children, killed on drop.
struct Cluster {
    ports: Vec<u16>,
    nodes: Vec<Child>,
    dir: PathBuf,
}

use crate::ports::free_cluster_port as spare_port;

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Cluster {
    async fn start() -> Self {
        let dir =
            std::env::temp_dir().join(format!("seckill-cluster-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let ports: Vec<u16> = (0..3).map(|_| spare_port()).collect();
        let nodes = ports
            .iter()
            .map(|port| {
                Command::new("redis-server")
                    .args([
                        "--port",
                        &port.to_string(),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                    ])
                    .args([
                        "--cluster-config-file",
                        &format!("nodes-{port}.conf"),
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                    ])
                    .arg("--dir")
                    .arg(&dir)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("redis-server")
            })
            .collect();
        let cluster = Self { ports, nodes, dir };
        for port in &cluster.ports {
            wait_until(|| cli(*port, &["ping"]).contains("PONG")).await;
        }
        let addrs: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            created.status.success(),
            "{}",
            String::from_utf8_lossy(&created.stdout)
        );
        for port in &cluster.ports {
            wait_until(|| cli(*port, &["cluster", "info"]).contains("cluster_state:ok")).await;
        }
        cluster
    }

    fn url(&self) -> String {
        format!(
            "redis-cluster://127.0.0.1:{}?node=127.0.0.1:{}&node=127.0.0.1:{}",
            self.ports[0], self.ports[1], self.ports[2]
        )
    }

    /// The port of the primary that serves a key's slot.
    fn owner(&self, key: &str) -> u16 {
        let slot: u16 = cli(self.ports[0], &["cluster", "keyslot", key])
            .trim()
            .parse()
            .unwrap();
        let slots = cli(self.ports[0], &["cluster", "slots"]);
        // Lines: start, end, ip, port, id, ... for each range.
        let lines: Vec<&str> = slots.lines().map(str::trim).collect();
        for w in lines.windows(4) {
            if let (Ok(start), Ok(end), Ok(port)) = (
                w[0].parse::<u16>(),
                w[1].parse::<u16>(),
                w[3].parse::<u16>(),
            ) {
                if w[2] == "127.0.0.1" && (start..=end).contains(&slot) {
                    return port;
                }
            }
        }
        panic!("no owner for slot {slot}: {slots}");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn wait_until(mut ready: impl FnMut() -> bool) {
    for _ in 0..100 {
        if ready() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cluster did not come up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sale_on_a_three_node_redis_cluster_sells_exactly_the_stock() {
    let cluster = Cluster::start().await;
    let app = spawn_app_env(vec![("SECKILL_REDIS_URL".into(), cluster.url())]).await;
    let events = [
        app.open_sale(40, 100, 1).await,
        app.open_sale(40, 100, 1).await,
        app.open_sale(40, 100, 1).await,
    ];
    let owners: std::collections::HashSet<u16> = events
        .iter()
        .map(|e| cluster.owner(&app.redis.keys().event(e.id).meta))
        .collect();
    assert!(
        owners.len() >= 2,
        "the events' hash tags live on different nodes: {owners:?}"
    );
    app.fund(1, 300, 10_000).await;

    let buyer = app.buyer();
    let requests: Vec<(i64, i64)> = events
        .iter()
        .flat_map(|e| (1..=100).map(move |u| (e.id, u)))
        .collect();
    let results = all(requests, |(event, user)| {
        let buyer = buyer.clone();
        async move { (event, buyer.purchase(event, user, json!(1)).await.0) }
    })
    .await;
    for sale in &events {
        let accepted = results
            .iter()
            .filter(|(e, s)| *e == sale.id && *s == StatusCode::ACCEPTED)
            .count();
        assert_eq!(accepted, 40, "event {}", sale.id);
        app.drain(sale.id).await;
        assert_eq!(app.stock_left(sale.id).await, Some(0));
        app.assert_invariants(sale.id).await;
    }
    // Reconciler (lock and live-event set on other slots than the events) and
    // the script cache flushed on every node.
    for port in &cluster.ports {
        cli(*port, &["script", "flush"]);
    }
    let r = app
        .http
        .post(app.url("/admin/reconcile"))
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let report: serde_json::Value = r.json().await.unwrap();
    assert_eq!(report["events_checked"], 3);
    assert!(
        report["discrepancies"].as_array().unwrap().is_empty(),
        "{report:#}"
    );
    let (status, body) = app.purchase(events[0].id, 200, json!(1)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("sold_out"))
    );
    app.cleanup().await;
}
