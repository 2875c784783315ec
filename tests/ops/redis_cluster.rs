//! A real Redis Cluster of `masters` primaries with `replicas` replicas
//! each: `redis-server --cluster-enabled yes` children on spare loopback
//! ports (whose +10000 bus ports are free too), joined by
//! `redis-cli --cluster create`, with a short `cluster-node-timeout` so a
//! killed primary's replica is promoted within a few seconds. Each node
//! runs in its own directory under one temp dir; `Drop` kills every node
//! and removes the dir (the directory is kept when
//! `SECKILL_CLUSTER_KEEP_LOGS` is set, for a post-mortem).
//!
//! Self-contained (only `redis-server`, `redis-cli` and tokio), so the
//! benchmark can copy it as it is.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// All the hash slots of a cluster.
pub const SLOTS: u16 = 16_384;

pub use crate::ports::free_cluster_port as spare_port;

/// `redis-cli -p <port> <args>`: its stdout ("" when the node is down).
pub fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default()
}

/// One line of `CLUSTER NODES`, as far as the tests need it.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub id: String,
    pub port: u16,
    pub master: bool,
    /// Flagged `fail` (or `fail?`) by the node that was asked.
    pub failing: bool,
    /// A replica's primary id ("-" for a primary).
    pub master_id: String,
    /// Slot ranges served, inclusive (primaries only).
    pub slots: Vec<(u16, u16)>,
}

/// Parses `CLUSTER NODES`.
pub fn parse_nodes(text: &str) -> Vec<NodeInfo> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            // ip:port@cport[,hostname]
            let port = f[1].split('@').next()?.rsplit(':').next()?.parse().ok()?;
            let flags: Vec<&str> = f[2].split(',').collect();
            let slots = f[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|n| (n, n)),
                })
                .collect();
            Some(NodeInfo {
                id: f[0].to_owned(),
                port,
                master: flags.contains(&"master"),
                failing: flags.contains(&"fail") || flags.contains(&"fail?"),
                master_id: f[3].to_owned(),
                slots,
            })
        })
        .collect()
}

struct Node {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn log(&self) -> PathBuf {
        self.dir.join("redis.log")
    }
}

pub struct RedisCluster {
    pub dir: PathBuf,
    nodes: Vec<Node>,
    /// Primary port -> its replicas' ports, as created.
    created: BTreeMap<u16, Vec<u16>>,
}

impl RedisCluster {
    /// Starts `masters × (1 + replicas)` nodes, creates the cluster and
    /// waits until every node reports `cluster_state:ok` and every replica's
    /// link to its primary is up (a replica that never synced cannot be
    /// promoted).
    pub async fn start(masters: usize, replicas: usize, node_timeout_ms: u64) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "seckill-rcluster-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        let mut cluster = Self {
            dir: dir.clone(),
            nodes: Vec::new(),
            created: BTreeMap::new(),
        };
        for _ in 0..masters * (1 + replicas) {
            let port = spare_port();
            let node_dir = dir.join(format!("node-{port}"));
            std::fs::create_dir_all(&node_dir).expect("node dir");
            let mut node = Node {
                port,
                dir: node_dir,
                child: None,
            };
            node.child = Some(spawn_node(&node, node_timeout_ms));
            cluster.nodes.push(node);
        }
        for node in &cluster.nodes {
            cluster
                .wait(&format!("node {} answers PING", node.port), || {
                    cli(node.port, &["ping"]).contains("PONG")
                })
                .await;
        }
        let addrs: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            created.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&created.stdout),
            String::from_utf8_lossy(&created.stderr)
        );
        cluster.wait_ok(Duration::from_secs(30)).await.unwrap();
        // Every replica attached and in sync with its primary.
        let want = masters * replicas;
        cluster
            .wait("every replica linked to its primary", || {
                cluster
                    .replica_ports()
                    .iter()
                    .filter(|p| {
                        cli(**p, &["info", "replication"]).contains("master_link_status:up")
                    })
                    .count()
                    == want
            })
            .await;
        let view = cluster.nodes_view();
        let port_of: HashMap<&str, u16> = view.iter().map(|n| (n.id.as_str(), n.port)).collect();
        for n in view.iter().filter(|n| n.master) {
            cluster.created.insert(n.port, Vec::new());
        }
        for n in view.iter().filter(|n| !n.master) {
            if let Some(m) = port_of.get(n.master_id.as_str()) {
                cluster.created.entry(*m).or_default().push(n.port);
            }
        }
        assert_eq!(cluster.created.len(), masters, "{view:?}");
        cluster
    }

    /// Every node, as a `redis-cluster://` URL fred accepts (the first node
    /// in the authority, the others as `node=` parameters), so the client
    /// can still learn the topology when one of them is dead.
    pub fn url(&self) -> String {
        let mut nodes = self.nodes.iter().map(|n| n.port);
        let first = nodes.next().expect("a node");
        let rest: Vec<String> = nodes.map(|p| format!("node=127.0.0.1:{p}")).collect();
        format!("redis-cluster://127.0.0.1:{first}?{}", rest.join("&"))
    }

    /// Ports of the nodes still running.
    pub fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// `CLUSTER NODES` as seen by the first live node that answers.
    pub fn nodes_view(&self) -> Vec<NodeInfo> {
        for port in self.live_ports() {
            let view = parse_nodes(&cli(port, &["cluster", "nodes"]));
            if !view.is_empty() {
                return view;
            }
        }
        panic!("no live cluster node answers CLUSTER NODES");
    }

    /// Ports of the primaries serving slots now (not flagged failing).
    pub fn master_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .nodes_view()
            .iter()
            .filter(|n| n.master && !n.failing && !n.slots.is_empty())
            .map(|n| n.port)
            .collect();
        ports.sort_unstable();
        ports
    }

    /// Ports of the replicas now.
    pub fn replica_ports(&self) -> Vec<u16> {
        self.nodes_view()
            .iter()
            .filter(|n| !n.master && !n.failing)
            .map(|n| n.port)
            .collect()
    }

    /// The primary port serving `slot` now.
    pub fn master_of(&self, slot: u16) -> u16 {
        let view = self.nodes_view();
        view.iter()
            .filter(|n| n.master && !n.failing)
            .find(|n| n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .map(|n| n.port)
            .unwrap_or_else(|| panic!("no primary serves slot {slot}: {view:?}"))
    }

    /// The replicas of a primary as the cluster was created.
    pub fn created_replicas_of(&self, master: u16) -> Vec<u16> {
        self.created.get(&master).cloned().unwrap_or_default()
    }

    /// `CLUSTER KEYSLOT key`.
    pub fn keyslot(&self, key: &str) -> u16 {
        let port = self.live_ports()[0];
        cli(port, &["cluster", "keyslot", key])
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("CLUSTER KEYSLOT {key}"))
    }

    /// `kill -9` of one node (no shutdown, no save).
    pub fn kill9(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node on port {port}"));
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP one node: a replica stops taking its primary's stream (it
    /// lags), a primary stops answering. Nothing may ask the node anything
    /// (`redis-cli` would hang) until [`Self::sigcont`].
    pub fn sigstop(&self, port: u16) {
        self.signal(port, nix::sys::signal::Signal::SIGSTOP);
    }

    pub fn sigcont(&self, port: u16) {
        self.signal(port, nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, port: u16, signal: nix::sys::signal::Signal) {
        let node = self
            .nodes
            .iter()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node on port {port}"));
        let child = node.child.as_ref().expect("node running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal)
            .expect("signal a redis-server");
    }

    /// Closes a primary's links to its replicas (`CLIENT KILL TYPE
    /// replica`); how many it closed. A replica reconnects and resyncs
    /// within a second unless it is stopped ([`Self::sigstop`]): stop it
    /// first and it lags by everything written from here on.
    pub fn cut_replication(&self, master: u16) -> usize {
        cli(master, &["client", "kill", "type", "replica"])
            .trim()
            .parse()
            .unwrap_or(0)
    }

    /// A node's replication offset (`INFO replication`).
    pub fn repl_offset(&self, port: u16) -> i64 {
        cli(port, &["info", "replication"])
            .lines()
            .find_map(|l| l.trim().strip_prefix("master_repl_offset:"))
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1)
    }

    /// Whether the live nodes agree the cluster is whole: each says
    /// `cluster_state:ok` and sees every slot served by a live primary.
    pub fn is_ok(&self) -> bool {
        let live = self.live_ports();
        live.iter().all(|port| {
            if !cli(*port, &["cluster", "info"]).contains("cluster_state:ok") {
                return false;
            }
            let view = parse_nodes(&cli(*port, &["cluster", "nodes"]));
            let covered: u32 = view
                .iter()
                .filter(|n| n.master && !n.failing && live.contains(&n.port))
                .flat_map(|n| n.slots.iter())
                .map(|(a, b)| u32::from(*b) - u32::from(*a) + 1)
                .sum();
            covered == u32::from(SLOTS)
        })
    }

    /// Waits until [`Self::is_ok`]; how long it took.
    pub async fn wait_ok(&self, within: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        while !self.is_ok() {
            if started.elapsed() > within {
                return Err(format!(
                    "cluster not ok within {within:?}: {:?}\n{}",
                    self.nodes_view(),
                    self.log_tails(10)
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(started.elapsed())
    }

    async fn wait(&self, what: &str, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready() {
            assert!(
                Instant::now() < deadline,
                "{what}: not within 30 s\n{}",
                self.log_tails(10)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last lines of every node's log.
    pub fn log_tails(&self, lines: usize) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let text = std::fs::read_to_string(n.log()).unwrap_or_default();
                let all: Vec<&str> = text.lines().collect();
                format!(
                    "--- node {} ---\n{}\n",
                    n.port,
                    all[all.len().saturating_sub(lines)..].join("\n")
                )
            })
            .collect()
    }
}

fn spawn_node(node: &Node, node_timeout_ms: u64) -> Child {
    Command::new("redis-server")
        .args(["--port", &node.port.to_string(), "--bind", "127.0.0.1"])
        .args(["--cluster-enabled", "yes"])
        .args(["--cluster-config-file", "nodes.conf"])
        .args(["--cluster-node-timeout", &node_timeout_ms.to_string()])
        // A replica may be promoted however long its link was down.
        .args(["--cluster-replica-validity-factor", "0"])
        .args(["--save", "", "--appendonly", "no"])
        .args([
            "--repl-diskless-sync",
            "yes",
            "--repl-diskless-sync-delay",
            "0",
        ])
        .arg("--dir")
        .arg(&node.dir)
        .arg("--logfile")
        .arg(node.log())
        .args(["--daemonize", "no"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server (is it installed?)")
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::env::var_os("SECKILL_CLUSTER_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("cluster logs kept in {}", self.dir.display());
        }
    }
}
