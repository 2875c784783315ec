//! Loopback ports for the servers a test starts itself (`seckill serve`,
//! `redis-server`, cluster nodes, `nats-server`), shared by the test crates.
//!
//! They are drawn below the kernel's ephemeral range
//! (`/proc/sys/net/ipv4/ip_local_port_range`, 32768–60999 by default). A
//! port that `bind(127.0.0.1:0)` found free lies inside that range, and in
//! the moment before the server binds it, the kernel may hand it to the
//! local end of another test's outgoing connection: the server then fails
//! with "Address already in use" (seen in `make test`). A port below the
//! range is never given out that way; only another test drawing the same
//! number could take it, one chance in ten thousand.

use std::net::TcpListener;

/// Ports are drawn from `FIRST..FIRST + SPAN`; a cluster bus port
/// (`port + 10_000`) stays below the ephemeral range as well.
const FIRST: u16 = 12_000;
const SPAN: u16 = 10_000;

/// A loopback port below the ephemeral range, free a moment ago.
pub fn free_port() -> u16 {
    loop {
        let draw = uuid::Uuid::new_v4().as_u128() % u128::from(SPAN);
        let port = FIRST + u16::try_from(draw).expect("below SPAN");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A free port whose Redis Cluster bus port (`port + 10_000`) is free too.
#[allow(dead_code)] // Not every test crate starts a cluster.
pub fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}
