//! Many machines on one: network namespaces stand in for hosts (the scripts in
//! tests/cluster/, with names of their own so that they never touch another
//! cluster on this machine), the coordinator listens on the bridge, and workers
//! started inside the namespaces join it over TCP.
//!
//! Needs root and `ip` (iproute2). Without them the tests fail, saying so; set
//! `PSTREAM_SKIP_CLUSTER=1` to skip them instead (each says that it was skipped).
//! The tests take a lock, so that only one cluster is up at a time, and tear the
//! cluster down when they end, passed or failed.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

/// The simulated hosts' names are this and a number; the bridge and subnet are
/// this file's own.
const PREFIX: &str = "pscl-h";
const BRIDGE: &str = "psclbr";
const SUBNET: &str = "10.79.0";

/// A generous limit for anything that takes seconds: a hang guard, not a timing
/// assertion.
const PATIENCE: Duration = Duration::from_secs(120);

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pstream-coord"))
}

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/cluster")
}

/// Simulated hosts, up while this lives.
struct Cluster {
    state: tempfile::TempDir,
    _lock: Flock<File>,
}

impl Cluster {
    /// `hosts` namespaces on a bridge; `None` (after saying so) if the tests are
    /// to be skipped.
    fn up(hosts: usize) -> Option<Cluster> {
        let root = nix::unistd::geteuid().is_root();
        let ip = Command::new("ip")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !(root && ip) {
            let why = match (root, ip) {
                (false, _) => "they need root (network namespaces)",
                _ => "they need `ip` (iproute2: apt-get install iproute2)",
            };
            if std::env::var_os("PSTREAM_SKIP_CLUSTER").is_some() {
                eprintln!("SKIPPED: the cluster tests ({why}; PSTREAM_SKIP_CLUSTER is set)");
                return None;
            }
            panic!("the cluster tests cannot run: {why}; set PSTREAM_SKIP_CLUSTER=1 to skip them");
        }
        let lock = File::create(std::env::temp_dir().join("pstream-cluster-tests.lock"))
            .expect("create the cluster tests' lock file");
        let lock = Flock::lock(lock, FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .expect("lock the cluster tests' lock file");
        let cluster = Cluster {
            state: tempfile::tempdir().unwrap(),
            _lock: lock,
        };
        // Whatever a killed earlier run left behind goes first.
        cluster.script("netns-down.sh", &[]);
        cluster.script("netns-up.sh", &[&hosts.to_string()]);
        Some(cluster)
    }

    /// Run one of the scripts, with this cluster's names; it must succeed.
    fn script(&self, name: &str, args: &[&str]) {
        let out = Command::new("bash")
            .arg(scripts().join(name))
            .args(args)
            .env("CLUSTER_STATE_DIR", self.state.path())
            .env("NETNS_PREFIX", PREFIX)
            .env("NETNS_BRIDGE", BRIDGE)
            .env("NETNS_SUBNET", SUBNET)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {name}: {e}"));
        assert!(
            out.status.success(),
            "{name} {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The coordinator's address on the bridge.
    fn coordinator_ip(&self) -> String {
        format!("{SUBNET}.1")
    }

    /// Host `i`'s address.
    fn host_ip(&self, i: usize) -> String {
        format!("{SUBNET}.{}", i + 1)
    }

    /// A worker (pstream-coord serving its example functions) on host `i`.
    fn worker(&self, i: usize, addr: &str, token: &Path) -> Guarded {
        let child = Command::new("ip")
            .args(["netns", "exec", &format!("{PREFIX}{i}")])
            .arg(bin())
            .args(["--connect", addr, "--token-file"])
            .arg(token)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .env_remove("RUST_LOG")
            .spawn()
            .expect("start a worker in a namespace");
        Guarded(Some(child))
    }

    /// The processes running on host `i`.
    fn pids(&self, i: usize) -> Vec<u32> {
        let out = Command::new("ip")
            .args(["netns", "pids", &format!("{PREFIX}{i}")])
            .output()
            .expect("ip netns pids");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Wait until nothing runs on host `i`.
    fn wait_empty(&self, i: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let pids = self.pids(i);
            if pids.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "host {i} still runs {pids:?} after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Also when the test failed: nothing is left behind.
        let _ = Command::new("bash")
            .arg(scripts().join("netns-down.sh"))
            .env("CLUSTER_STATE_DIR", self.state.path())
            .env("NETNS_PREFIX", PREFIX)
            .env("NETNS_BRIDGE", BRIDGE)
            .env("NETNS_SUBNET", SUBNET)
            .stdin(Stdio::null())
            .output();
    }
}

/// A child process, killed and reaped when dropped.
struct Guarded(Option<Child>);

impl Guarded {
    fn pid(&self) -> u32 {
        self.0.as_ref().unwrap().id()
    }

    /// Wait for it to exit (with a deadline); its exit code.
    fn wait(mut self, limit: Duration) -> Option<i32> {
        let mut child = self.0.take().unwrap();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("a process did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A coordinator listening on the bridge, with its stderr read on a thread.
struct Coordinator {
    child: Guarded,
    /// The `HOST:PORT` workers join at.
    addr: String,
    stderr: mpsc::Receiver<String>,
}

impl Coordinator {
    fn start(cluster: &Cluster, dir: &Path, function: &str, extra: &[&str]) -> Coordinator {
        let mut cmd = Command::new(bin());
        cmd.args(["run", "--function", function, "--format", "jsonl"])
            .args(["--listen", &format!("{}:0", cluster.coordinator_ip())])
            .arg("--token-file")
            .arg(dir.join("job.token"))
            .arg("--input")
            .arg(dir.join("in.txt"))
            .arg("--output")
            .arg(dir.join("out.txt"))
            .arg("--stats-json")
            .arg(dir.join("stats.json"))
            .args(["--wait-workers", "60s"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env_remove("RUST_LOG");
        let mut child = cmd.spawn().expect("start the coordinator");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("coordinator: {line}");
                let _ = tx.send(line);
            }
        });
        let child = Guarded(Some(child));
        let deadline = Instant::now() + PATIENCE;
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .expect("the coordinator never said where it listens");
            if let Some(rest) = line.split("listening on ").nth(1) {
                let addr = rest.split(';').next().unwrap().to_string();
                break addr;
            }
        };
        Coordinator {
            child,
            addr,
            stderr: rx,
        }
    }

    /// Wait for the job to end; its exit code and the rest of its stderr.
    fn finish(self) -> (Option<i32>, String) {
        let code = self.child.wait(PATIENCE);
        let mut text = String::new();
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(5)) {
            text.push_str(&line);
            text.push('\n');
        }
        (code, text)
    }
}

/// Numbers 1..=n as input; the doubled numbers as the expected output.
fn job(dir: &Path, n: u64) -> String {
    let input: String = (1..=n).map(|i| format!("{i}\n")).collect();
    std::fs::write(dir.join("in.txt"), input).unwrap();
    pstream::protocol::auth::create_token_file(&dir.join("job.token")).unwrap();
    (1..=n).map(|i| format!("{}\n", 2 * i)).collect()
}

fn stats(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("stats.json")).unwrap()).unwrap()
}

/// Wait until `path` has some bytes (the job is under way).
fn wait_for_output(path: &Path) {
    let deadline = Instant::now() + PATIENCE;
    while std::fs::metadata(path).map_or(0, |m| m.len()) == 0 {
        assert!(Instant::now() < deadline, "no output came");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_job_across_three_hosts_is_exact_and_every_host_works() {
    let Some(cluster) = Cluster::up(3) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let expected = job(dir.path(), 60_000);
    let coordinator = Coordinator::start(&cluster, dir.path(), "slow_double", &[]);
    let token = dir.path().join("job.token");
    let workers: Vec<Guarded> = (1..=3)
        .flat_map(|i| [i, i])
        .map(|i| cluster.worker(i, &coordinator.addr, &token))
        .collect();
    let (code, stderr) = coordinator.finish();
    assert_eq!(code, Some(0), "{stderr}");
    let out = std::fs::read_to_string(dir.path().join("out.txt")).unwrap();
    assert!(
        out == expected,
        "the output differs from the one-machine result"
    );
    let stats = stats(dir.path());
    for i in 1..=3 {
        let host = &stats["hosts"][cluster.host_ip(i)];
        assert!(
            host["items"].as_u64() > Some(0),
            "host {i} did no work: {stats}"
        );
    }
    assert_eq!(stats["items_failed"], 0, "{stats}");
    // Told to shut down, the workers exit 0.
    for w in workers {
        assert_eq!(w.wait(PATIENCE), Some(0));
    }
    for i in 1..=3 {
        cluster.wait_empty(i, PATIENCE);
    }
}

#[test]
fn a_host_cut_off_mid_job_loses_nothing_and_its_workers_exit() {
    let Some(cluster) = Cluster::up(3) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let expected = job(dir.path(), 150_000);
    let coordinator = Coordinator::start(
        &cluster,
        dir.path(),
        "slow_double",
        &["--heartbeat", "250ms", "--heartbeat-timeout", "2s"],
    );
    let token = dir.path().join("job.token");
    let workers: Vec<Guarded> = (1..=3)
        .flat_map(|i| [i, i])
        .map(|i| cluster.worker(i, &coordinator.addr, &token))
        .collect();
    wait_for_output(&dir.path().join("out.txt"));
    cluster.script("netns-partition.sh", &["cut", "2"]);
    let (code, stderr) = coordinator.finish();
    // Healed after the job: whatever host 2 sends now reaches nobody.
    cluster.script("netns-partition.sh", &["heal", "2"]);
    assert_eq!(code, Some(0), "{stderr}");
    let out = std::fs::read_to_string(dir.path().join("out.txt")).unwrap();
    assert!(out == expected, "the output is not exact");
    let stats = stats(dir.path());
    assert_eq!(stats["items_failed"], 0, "{stats}");
    assert_eq!(stats["crashes"], 0, "{stats}");
    let cut = &stats["hosts"][cluster.host_ip(2)];
    assert!(
        cut["lost"].as_u64() >= Some(1),
        "host 2 not named lost: {stats}"
    );
    assert!(stats["lost_workers"].as_u64() >= Some(1), "{stats}");
    // The cut host's workers give their silent coordinator up and exit.
    cluster.wait_empty(2, Duration::from_secs(60));
    drop(workers);
}

#[test]
fn a_coordinator_killed_leaves_no_worker_on_any_host() {
    let Some(cluster) = Cluster::up(3) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    job(dir.path(), 2_000_000);
    let coordinator = Coordinator::start(
        &cluster,
        dir.path(),
        "slow_double",
        &["--heartbeat", "250ms", "--heartbeat-timeout", "2s"],
    );
    let token = dir.path().join("job.token");
    let workers: Vec<Guarded> = (1..=3)
        .map(|i| cluster.worker(i, &coordinator.addr, &token))
        .collect();
    wait_for_output(&dir.path().join("out.txt"));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(coordinator.child.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    for i in 1..=3 {
        cluster.wait_empty(i, Duration::from_secs(30));
    }
    drop(workers);
    drop(coordinator);
}

#[test]
fn a_host_that_joins_mid_job_takes_work() {
    let Some(cluster) = Cluster::up(4) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let expected = job(dir.path(), 150_000);
    let coordinator = Coordinator::start(&cluster, dir.path(), "slow_double", &[]);
    let token = dir.path().join("job.token");
    let mut workers: Vec<Guarded> = (1..=3)
        .map(|i| cluster.worker(i, &coordinator.addr, &token))
        .collect();
    wait_for_output(&dir.path().join("out.txt"));
    // A fourth host, started late.
    workers.push(cluster.worker(4, &coordinator.addr, &token));
    let (code, stderr) = coordinator.finish();
    assert_eq!(code, Some(0), "{stderr}");
    let out = std::fs::read_to_string(dir.path().join("out.txt")).unwrap();
    assert!(out == expected, "the output is not exact");
    let stats = stats(dir.path());
    let late = &stats["hosts"][cluster.host_ip(4)];
    assert!(
        late["items"].as_u64() > Some(0),
        "the late host did no work: {stats}"
    );
    for w in workers {
        assert_eq!(w.wait(PATIENCE), Some(0));
    }
}

/// Fan-out: 16 hosts with 32 workers each join one coordinator. The job waits for
/// all 512 (`--min-workers`), its output is exact, every host works, and the
/// coordinator stays small: its engine waits in one epoll set and lends one
/// receive buffer to each connection in turn, so a worker costs it little memory.
/// (How fast they start and how fast the job runs is the benchmark's business:
/// `pstream-bench --only tcp`.)
#[test]
fn five_hundred_and_twelve_workers_on_sixteen_hosts_are_exact_and_the_coordinator_stays_small() {
    const HOSTS: usize = 16;
    const PER_HOST: usize = 32;
    const LIMIT_KIB: u64 = 64 << 10;
    let Some(cluster) = Cluster::up(HOSTS) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let expected = job(dir.path(), 1_000_000);
    let all = (HOSTS * PER_HOST).to_string();
    let coordinator = Coordinator::start(
        &cluster,
        dir.path(),
        "double",
        // Batches of at most 1,000 items (half the window): about 1,000 of them,
        // handed round every idle worker in turn, so each host gets some.
        &["--workers", "0", "--min-workers", &all, "--window", "2000"],
    );
    let token = dir.path().join("job.token");
    let workers: Vec<Guarded> = (1..=HOSTS)
        .flat_map(|i| std::iter::repeat_n(i, PER_HOST))
        .map(|i| cluster.worker(i, &coordinator.addr, &token))
        .collect();
    let (code, stderr) = coordinator.finish();
    assert_eq!(code, Some(0), "{stderr}");
    let out = std::fs::read_to_string(dir.path().join("out.txt")).unwrap();
    assert!(out == expected, "the output is not exact");
    let stats = stats(dir.path());
    assert_eq!(stats["items_failed"], 0, "{stats}");
    for i in 1..=HOSTS {
        let host = &stats["hosts"][cluster.host_ip(i)];
        assert_eq!(host["workers"], PER_HOST, "host {i}: {stats}");
        assert!(
            host["items"].as_u64() > Some(0),
            "host {i} did no work: {stats}"
        );
    }
    let peak = stats["peak_rss_kib"]
        .as_u64()
        .expect("the peak RSS is known");
    assert!(
        peak < LIMIT_KIB,
        "the coordinator's peak RSS with {all} workers is {peak} KiB, not under {LIMIT_KIB}"
    );
    eprintln!("coordinator's peak RSS with {all} workers: {peak} KiB");
    for w in workers {
        assert_eq!(w.wait(PATIENCE), Some(0));
    }
    for i in 1..=HOSTS {
        cluster.wait_empty(i, PATIENCE);
    }
}
