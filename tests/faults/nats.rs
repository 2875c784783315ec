//! A private `nats-server` with JetStream for the outbox scenario: a spare
//! loopback port, its store in the scenario's temp dir (kept across
//! restarts, as a real broker's disk is).

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::harness::{free_port, tail};

pub struct NatsServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    pub async fn start(dir: PathBuf) -> Self {
        std::fs::create_dir_all(&dir).expect("nats dir");
        let mut server = Self {
            port: free_port(),
            dir,
            child: None,
        };
        server.spawn().await;
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("nats.log")
    }

    async fn spawn(&mut self) {
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js"])
            .arg("-sd")
            .arg(self.dir.join("store"))
            .arg("-l")
            .arg(self.log())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server (apt-get install nats-server; make services does)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let ready = async {
                let client = async_nats::connect(self.url()).await.ok()?;
                client.flush().await.ok()
            };
            if let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(1), ready).await {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("nats-server exited ({status}):\n{}", tail(&self.log(), 30));
            }
            assert!(
                Instant::now() < deadline,
                "nats-server on port {} not ready:\n{}",
                self.port,
                tail(&self.log(), 30)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and store.
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill9();
    }
}
