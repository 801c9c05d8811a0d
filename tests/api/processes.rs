//! The shared process harness: real servers this suite starts, kills (SIGKILL) and restarts —
//! private `redis-server`s and Redis Clusters on loopback ports, and the `flashsale` binary
//! itself with whatever engine and database its environment names. Used by the fault,
//! webhook, durability and outage tests.

use crate::helpers::{spawn_app_with, unique_id, Backend};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A free loopback port (bound, then released for the server to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A private `redis-server` on a loopback port, with its own directory.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    appendonly: bool,
    /// The port of the master this server replicates, if it is a replica.
    replica_of: Option<u16>,
    /// A Redis Cluster node (its cluster config kept in its directory across restarts).
    cluster: bool,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one; `appendonly`: AOF with `appendfsync always` (what survives a kill).
    pub fn start(appendonly: bool) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique_id("redis"));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut server = RedisServer {
            port: free_port(),
            dir,
            appendonly,
            replica_of: None,
            cluster: false,
            child: None,
        };
        server.restart();
        server
    }

    /// A replica of `master`, without persistence of its own.
    pub fn replica_of(master: &RedisServer) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique_id("replica"));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut server = RedisServer {
            port: free_port(),
            dir,
            appendonly: false,
            replica_of: Some(master.port),
            cluster: false,
            child: None,
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: no shutdown save, no goodbye to clients.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory, and waits until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let mut command = Command::new("redis-server");
        if let Some(master) = self.replica_of {
            command.args(["--replicaof", "127.0.0.1", &master.to_string()]);
        }
        if self.cluster {
            command.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ]);
            command.args(["--cluster-node-timeout", "2000"]);
        }
        let child = command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--dir"])
            .arg(&self.dir)
            .args(["--appendonly", if self.appendonly { "yes" } else { "no" }])
            .args(["--appendfsync", "always"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/ensure-services installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A private 3-master Redis Cluster on loopback ports, its slots spread by
/// `redis-cli --cluster create`. A node restarted without persistence comes back empty but
/// with its cluster config, serving the same slots.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// `appendonly`: every node with an AOF and `appendfsync always`.
    pub fn start_with(appendonly: bool) -> Self {
        Self::create(appendonly, 0)
    }

    /// Three masters with a replica each (`redis-cli` picks which replicates which; see
    /// [`RedisCluster::replica_of`]).
    pub fn start_with_replicas(appendonly: bool) -> Self {
        Self::create(appendonly, 1)
    }

    fn create(appendonly: bool, replicas: usize) -> Self {
        let nodes: Vec<RedisServer> = (0..3 * (1 + replicas))
            .map(|_| {
                let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique_id("cluster"));
                std::fs::create_dir_all(&dir).expect("redis dir");
                let mut node = RedisServer {
                    port: free_port(),
                    dir,
                    appendonly,
                    replica_of: None,
                    cluster: true,
                    child: None,
                };
                node.restart();
                node
            })
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .expect("redis-cli runs");
        assert!(created.success(), "redis-cli --cluster create failed");
        let cluster = RedisCluster { nodes };
        cluster.wait_until_ok();
        cluster
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    fn query(&self, node: usize, command: &redis::Cmd) -> redis::Value {
        let mut connection = redis::Client::open(self.nodes[node].url())
            .expect("valid URL")
            .get_connection()
            .expect("connects");
        command.query(&mut connection).expect("answers")
    }

    /// Every node says `cluster_state:ok`.
    pub fn wait_until_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in 0..self.nodes.len() {
            loop {
                let info: String = redis::from_redis_value_ref(
                    &self.query(node, redis::cmd("CLUSTER").arg("INFO")),
                )
                .expect("text");
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "the cluster never became ok");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// A node's own line of `CLUSTER NODES`: `<id> <address> myself,<role> <master id or ->
    /// <ping> <pong> <epoch> <link> <slot ranges>...`.
    fn own_line(&self, node: usize) -> String {
        let nodes: String =
            redis::from_redis_value_ref(&self.query(node, redis::cmd("CLUSTER").arg("NODES")))
                .expect("text");
        nodes
            .lines()
            .find(|line| line.contains("myself"))
            .expect("a node lists itself")
            .to_owned()
    }

    /// The index of the node replicating node `master`.
    pub fn replica_of(&self, master: usize) -> usize {
        let id = self.id(master);
        (0..self.nodes.len())
            .find(|&node| self.own_line(node).split_whitespace().nth(3) == Some(id.as_str()))
            .expect("every master has a replica")
    }

    /// Whether node `node` is a master now (by its own word).
    pub fn is_master(&self, node: usize) -> bool {
        self.nodes[node].info("replication").contains("role:master")
    }

    /// `key`'s slot.
    pub fn slot(&self, key: &str) -> i64 {
        redis::from_redis_value_ref(&self.query(0, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key)))
            .expect("a slot")
    }

    /// A node's cluster id.
    pub fn id(&self, node: usize) -> String {
        redis::from_redis_value_ref(&self.query(node, redis::cmd("CLUSTER").arg("MYID")))
            .expect("an id")
    }

    /// The first slot a node serves.
    pub fn first_slot(&self, node: usize) -> i64 {
        self.own_line(node)
            .split_whitespace()
            .nth(8)
            .and_then(|range| range.split('-').next())
            .and_then(|first| first.parse().ok())
            .expect("the node serves slots")
    }

    /// The index of the node serving `key`'s slot.
    pub fn owner(&self, key: &str) -> usize {
        let slot = self.slot(key);
        (0..self.nodes.len())
            .find(|&node| {
                self.own_line(node).split_whitespace().skip(8).any(|range| {
                    let (from, to) = range.split_once('-').unwrap_or((range, range));
                    let (from, to) = (from.parse::<i64>(), to.parse::<i64>());
                    matches!((from, to), (Ok(f), Ok(t)) if f <= slot && slot <= t)
                })
            })
            .expect("some node serves every slot")
    }
}

/// Two service instances on the cluster, sharing key namespace `namespace` and a new
/// database.
pub async fn two_instances_on(
    cluster: &RedisCluster,
    namespace: &str,
) -> Arc<[crate::helpers::TestApp; 2]> {
    let nodes = cluster.urls();
    let database = crate::helpers::fresh_postgres_schema().await;
    let tune = |c: &mut flashsale::config::Config| {
        c.redis_url = None;
        c.redis_cluster_nodes = nodes.clone();
        c.redis_namespace = namespace.to_owned();
        c.database_url = Some(database.clone());
    };
    Arc::new([
        spawn_app_with(Backend::Cluster, tune).await,
        spawn_app_with(Backend::Cluster, tune).await,
    ])
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl RedisServer {
    /// `CONFIG SET name value` on this server.
    pub fn config_set(&self, name: &str, value: &str) {
        let status = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "CONFIG", "SET", name, value])
            .stdout(Stdio::null())
            .status()
            .expect("redis-cli runs");
        assert!(status.success());
    }
}

/// Awaits `call`, asserting it answered within `limit` (and giving up after three times that).
pub async fn within<T>(
    limit: Duration,
    what: &str,
    call: impl std::future::Future<Output = T>,
) -> T {
    let started = Instant::now();
    let answer = tokio::time::timeout(limit * 3, call)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer in {:?}", limit * 3));
    let took = started.elapsed();
    assert!(
        took <= limit,
        "{what}: answered after {took:?}, more than {limit:?}"
    );
    answer
}

/// The `flashsale` binary on the embedded engine and a SQLite file, as a process.
pub struct Service {
    pub child: Child,
    pub address: String,
}

pub const ADMIN: &str = "fault-admin";
pub const STORE: &str = "fault-store";

impl Service {
    /// The binary on the embedded engine and a SQLite file.
    pub fn start(sqlite: &str, port: u16) -> Self {
        Self::start_with(port, &[("FLASHSALE_SQLITE_PATH", sqlite)])
    }

    /// The binary with `env` besides the tokens (no Redis nor Postgres unless named there).
    pub fn start_with(port: u16, env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_flashsale"));
        command
            .env("FLASHSALE_LISTEN", format!("127.0.0.1:{port}"))
            .env("FLASHSALE_ADMIN_TOKENS", ADMIN)
            .env("FLASHSALE_STORE_TOKENS", STORE)
            .env("FLASHSALE_JWT_SECRET", "fault-secret")
            .env("FLASHSALE_USER_RATE_PER_SECOND", "0")
            .env_remove("FLASHSALE_REDIS_URL")
            .env_remove("FLASHSALE_DATABASE_URL");
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the binary runs");
        let stdout = child.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        // Logs share stdout with the banner; the banner says the listener is bound.
        let banner = lines
            .by_ref()
            .map_while(Result::ok)
            .find(|line| line.contains("flashsale listening"));
        assert!(banner.is_some(), "the service printed no banner");
        // Keep draining stdout so the service never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Service {
            child,
            address: format!("http://127.0.0.1:{port}"),
        }
    }

    /// SIGKILL: no shutdown of any kind.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    pub fn wait(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.child.try_wait().ok().flatten().is_none() {
            assert!(
                Instant::now() < deadline,
                "the service did not stop in {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three Redis Sentinels on loopback ports watching a primary as `flashsale` (quorum 2; a
/// primary that does not answer for 2 s is down), each a `redis-server --sentinel` with its
/// own config file, which Sentinel rewrites as it learns the replicas and the others.
pub struct SentinelSet {
    pub ports: Vec<u16>,
    dir: PathBuf,
    children: Vec<Child>,
}

impl SentinelSet {
    pub fn watch(primary: &RedisServer) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique_id("sentinels"));
        std::fs::create_dir_all(&dir).expect("sentinel dir");
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let children = ports
            .iter()
            .map(|port| {
                let config = dir.join(format!("sentinel-{port}.conf"));
                std::fs::write(
                    &config,
                    format!(
                        "port {port}\nbind 127.0.0.1\ndir {}\n\
                         sentinel monitor flashsale 127.0.0.1 {} 2\n\
                         sentinel down-after-milliseconds flashsale 2000\n\
                         sentinel failover-timeout flashsale 5000\n\
                         sentinel parallel-syncs flashsale 1\n",
                        dir.display(),
                        primary.port
                    ),
                )
                .expect("sentinel config");
                let child = Command::new("redis-server")
                    .arg(&config)
                    .arg("--sentinel")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("redis-server is installed (scripts/ensure-services installs it)");
                let deadline = Instant::now() + Duration::from_secs(10);
                while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
                    assert!(Instant::now() < deadline, "a sentinel did not start");
                    std::thread::sleep(Duration::from_millis(20));
                }
                child
            })
            .collect();
        SentinelSet {
            ports,
            dir,
            children,
        }
    }

    /// `host:port` of each sentinel, as `FLASHSALE_REDIS_SENTINELS` takes them.
    pub fn addresses(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect()
    }

    /// The primary's port as the first sentinel that answers names it.
    pub fn primary_port(&self) -> Option<u16> {
        self.ports.iter().find_map(|port| {
            redis_cli(*port, &["SENTINEL", "get-master-addr-by-name", "flashsale"])
                .lines()
                .nth(1)
                .and_then(|p| p.trim().parse().ok())
        })
    }

    /// Waits until every sentinel knows the others and the replicas (`count` of them), so a
    /// failover can be agreed on; panics after 20 s.
    pub fn wait_until_ready(&self, replicas: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = self.ports.iter().all(|port| {
                let out = redis_cli(*port, &["SENTINEL", "master", "flashsale"]);
                let field = |name: &str| {
                    let lines: Vec<&str> = out.lines().collect();
                    lines
                        .iter()
                        .position(|l| *l == name)
                        .and_then(|i| lines.get(i + 1))
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0)
                };
                field("num-slaves") >= replicas && field("num-other-sentinels") >= 2
            });
            if ready {
                return;
            }
            assert!(Instant::now() < deadline, "the sentinels never met");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// What `redis-cli -p <port> <args…>` prints (empty when the server does not answer).
fn redis_cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl RedisServer {
    /// Waits until `count` replicas are connected and in sync (`state=online`); panics after
    /// 20 s.
    pub fn wait_for_replicas(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.info("replication").matches("state=online").count() < count {
            assert!(Instant::now() < deadline, "the replicas never came online");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGSTOP: the server stops answering anyone (a replica stops receiving its stream).
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Closes its replicas' connections (`CLIENT KILL TYPE replica`): with a replica stopped
    /// ([`RedisServer::pause`]), nothing written from now on reaches it — what was already
    /// in the sockets' kernel buffers (megabytes; a slow sale's whole pause) still would,
    /// had the connection stayed open.
    pub fn drop_replicas(&self) {
        redis_cli(self.port, &["CLIENT", "KILL", "TYPE", "replica"]);
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .arg(signal)
                .arg(child.id().to_string())
                .status()
                .expect("kill runs");
            assert!(status.success());
        }
    }

    /// `INFO <section>` of this server, as text (empty when it does not answer).
    pub fn info(&self, section: &str) -> String {
        redis_cli(self.port, &["INFO", section])
    }

    /// Starts it again (with its data, if it keeps any) as a replica of the server on
    /// `primary`: how an operator brings back a primary that failed over.
    pub fn restart_as_replica_of(&mut self, primary: u16) {
        self.replica_of = Some(primary);
        self.restart();
    }
}
