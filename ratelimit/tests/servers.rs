//! Real Redis servers the tests start and stop themselves: single nodes,
//! TLS with certificates made at test time, and Redis Clusters built with
//! `redis-cli --cluster create`. `scripts/test.sh` installs `redis-server`,
//! `redis-cli` and `openssl`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// A free loopback port with nothing listening on it.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free port whose cluster bus port (10,000 above it) is free too:
/// below the ephemeral range, so that both fit under 65,536.
fn free_cluster_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    // Each process starts elsewhere: test binaries may run side by side.
    let start = 20_000 + (std::process::id() % 9_000) as u16;
    let _ = NEXT.compare_exchange(0, start, Ordering::Relaxed, Ordering::Relaxed);
    let free = |port: u16| TcpListener::bind(("127.0.0.1", port)).is_ok();
    loop {
        let port = NEXT.fetch_add(1, Ordering::Relaxed);
        if port >= 29_000 {
            NEXT.store(20_000, Ordering::Relaxed);
        } else if free(port) && free(port + 10_000) {
            return port;
        }
    }
}

/// A scratch directory removed when dropped.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("floodgate-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA, a server certificate it signs for `localhost` only, and a second
/// CA that signs nothing here: made with `openssl` in a scratch directory.
pub struct Certificates {
    dir: Scratch,
}

impl Certificates {
    pub fn generate() -> Certificates {
        let dir = Scratch::new("tls");
        let run = |args: &[&str]| {
            let output = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("openssl is installed by scripts/test.sh");
            assert!(
                output.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        for ca in ["ca", "other-ca"] {
            run(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
                "-days",
                "2",
                "-subj",
                &format!("/CN=floodgate test {ca}"),
            ]);
        }
        run(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        std::fs::write(
            dir.path().join("server.ext"),
            "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ]);
        Certificates { dir }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The CA that signed the server's certificate, as PEM.
    pub fn ca(&self) -> Vec<u8> {
        std::fs::read(self.file("ca.pem")).unwrap()
    }

    /// A CA that did not.
    pub fn other_ca(&self) -> Vec<u8> {
        std::fs::read(self.file("other-ca.pem")).unwrap()
    }

    /// `redis-server` arguments serving TLS on `port` and nothing in plain.
    fn server_args(&self, port: u16) -> Vec<String> {
        let path = |name: &str| self.file(name).display().to_string();
        vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            path("server.pem"),
            "--tls-key-file".into(),
            path("server.key"),
            "--tls-ca-cert-file".into(),
            path("ca.pem"),
            "--tls-auth-clients".into(),
            "no".into(),
        ]
    }

    /// `redis-cli` arguments to reach a server of these certificates.
    fn cli_args(&self) -> Vec<String> {
        vec![
            "--tls".into(),
            "--cacert".into(),
            self.file("ca.pem").display().to_string(),
        ]
    }
}

/// A `redis-server` of the test's own, stopped when dropped.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    tls: Vec<String>,
    /// What it was started with, to start it again.
    args: Vec<String>,
}

impl RedisServer {
    /// A plaintext server on `port`.
    pub fn start(port: u16) -> RedisServer {
        RedisServer::spawn(port, Vec::new(), Vec::new(), None)
    }

    /// A TLS-only server with `certificates`, on a free port.
    pub fn start_tls(certificates: &Certificates) -> RedisServer {
        let port = free_port();
        let server = RedisServer::spawn(
            port,
            certificates.server_args(port),
            certificates.cli_args(),
            None,
        );
        server.wait_until_up();
        server
    }

    fn spawn(
        port: u16,
        mut args: Vec<String>,
        tls: Vec<String>,
        dir: Option<&Path>,
    ) -> RedisServer {
        if args.is_empty() {
            args = vec!["--port".into(), port.to_string()];
        }
        let dir = dir.map_or_else(std::env::temp_dir, Path::to_path_buf);
        args.extend(
            [
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ]
            .map(String::from),
        );
        args.push(dir.display().to_string());
        let child = start_process(&args);
        RedisServer {
            child,
            port,
            tls,
            args,
        }
    }

    /// Stops the process (as a crash would), keeping its files.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again, on the same port with the same files (a cluster
    /// node rejoins from its nodes.conf), and waits until it answers.
    pub fn restart(&mut self) {
        self.kill();
        self.child = start_process(&self.args);
        self.wait_until_up();
    }

    /// `redis-cli` against this server; its output, failing the test if it fails.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, &self.tls, args)
    }

    /// Waits until the server answers PING.
    pub fn wait_until_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let output = cli_output(self.port, &self.tls, &["PING"]);
            if output.as_deref().is_ok_and(|o| o.trim() == "PONG") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn start_process(args: &[String]) -> Child {
    Command::new("redis-server")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is installed by scripts/test.sh")
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cli_output(port: u16, tls: &[String], args: &[&str]) -> Result<String, String> {
    let output = Command::new("redis-cli")
        .args(tls)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli is installed by scripts/test.sh");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() && !stdout.starts_with("ERR") {
        Ok(stdout)
    } else {
        Err(format!(
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

fn cli(port: u16, tls: &[String], args: &[&str]) -> String {
    cli_output(port, tls, args).unwrap_or_else(|e| panic!("redis-cli -p {port} {args:?}: {e}"))
}

/// A Redis Cluster of three primaries, each with a replica if asked,
/// stopped when dropped.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    scheme: &'static str,
    _dir: Scratch,
}

impl RedisCluster {
    /// Starts the nodes, joins them with `redis-cli --cluster create`, and
    /// waits until every node sees every slot served and replicas in sync.
    pub fn start(replicas: bool, tls: Option<&Certificates>) -> RedisCluster {
        RedisCluster::start_with(replicas, tls, &[])
    }

    /// [`RedisCluster::start`], with more `redis-server` arguments for each node.
    pub fn start_with(replicas: bool, tls: Option<&Certificates>, extra: &[&str]) -> RedisCluster {
        let dir = Scratch::new("cluster");
        let count = if replicas { 6 } else { 3 };
        let nodes: Vec<RedisServer> = (0..count)
            .map(|_| {
                let port = free_cluster_port();
                let node_dir = dir.path().join(port.to_string());
                std::fs::create_dir_all(&node_dir).unwrap();
                let mut args = match tls {
                    Some(certificates) => {
                        let mut args = certificates.server_args(port);
                        // Announced by the name the certificate holds, as
                        // managed services do: clients verify every node.
                        args.extend(
                            [
                                "--tls-cluster",
                                "yes",
                                "--tls-replication",
                                "yes",
                                "--cluster-announce-hostname",
                                "localhost",
                                "--cluster-preferred-endpoint-type",
                                "hostname",
                            ]
                            .map(String::from),
                        );
                        args
                    }
                    None => vec!["--port".into(), port.to_string()],
                };
                args.extend(
                    ["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"]
                        .map(String::from),
                );
                args.extend(extra.iter().map(|arg| arg.to_string()));
                let cli = tls.map(Certificates::cli_args).unwrap_or_default();
                RedisServer::spawn(port, args, cli, Some(&node_dir))
            })
            .collect();
        for node in &nodes {
            node.wait_until_up();
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut create: Vec<&str> = vec!["--cluster", "create"];
        create.extend(addresses.iter().map(String::as_str));
        create.extend([
            "--cluster-replicas",
            if replicas { "1" } else { "0" },
            "--cluster-yes",
        ]);
        nodes[0].cli(&create);
        let cluster = RedisCluster {
            nodes,
            scheme: if tls.is_some() { "rediss" } else { "redis" },
            _dir: dir,
        };
        cluster.wait_until_healthy();
        cluster
    }

    /// The URL of node `index` (a seed for a cluster client). With TLS, by
    /// the name its certificate holds.
    pub fn url(&self, index: usize) -> String {
        let host = if self.scheme == "rediss" {
            "localhost"
        } else {
            "127.0.0.1"
        };
        format!("{}://{host}:{}", self.scheme, self.nodes[index].port)
    }

    /// The slot of `key`, as the cluster computes it.
    pub fn slot(&self, key: &str) -> u16 {
        self.nodes[0]
            .cli(&["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .unwrap()
    }

    /// The slot ranges node `index` serves as a primary.
    pub fn ranges_of(&self, index: usize) -> Vec<(u16, u16)> {
        let port = self.nodes[index].port.to_string();
        let slots = self.nodes[0].cli(&["CLUSTER", "SLOTS"]);
        let lines: Vec<&str> = slots.lines().map(str::trim).collect();
        // Each range: its first and last slot, then its primary's host and port.
        lines
            .windows(4)
            .filter(|w| w[3] == port && w[0].parse::<u16>().is_ok() && w[1].parse::<u16>().is_ok())
            .map(|w| (w[0].parse().unwrap(), w[1].parse().unwrap()))
            .collect()
    }

    /// The nodes that are primaries now.
    pub fn primaries(&self) -> Vec<&RedisServer> {
        self.nodes
            .iter()
            .filter(|node| node.cli(&["ROLE"]).starts_with("master"))
            .collect()
    }

    /// Whether `node`'s slot map names every node by its host name (which
    /// spreads by gossip), the name the certificate holds.
    fn announces_hostnames(&self, node: &RedisServer) -> bool {
        let slots = node.cli(&["CLUSTER", "SLOTS"]);
        slots
            .lines()
            .filter(|line| line.trim() == "localhost")
            .count()
            == self.nodes.len()
    }

    /// Waits until every node reports `cluster_state:ok`, knows every node,
    /// and every replica's link to its primary is up.
    pub fn wait_until_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let count = self.nodes.len().to_string();
        loop {
            let healthy = self.nodes.iter().all(|node| {
                let info = node.cli(&["CLUSTER", "INFO"]);
                let replication = node.cli(&["INFO", "replication"]);
                info.contains("cluster_state:ok")
                    && info.contains(&format!("cluster_known_nodes:{count}"))
                    && info.contains("cluster_slots_ok:16384")
                    && (replication.contains("role:master")
                        || replication.contains("master_link_status:up"))
                    && (self.scheme == "redis" || self.announces_hostnames(node))
            });
            if healthy {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not become healthy: {}",
                self.nodes[0].cli(&["CLUSTER", "SLOTS"])
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
