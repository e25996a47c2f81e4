//! Host agents on many machines on one: network namespaces stand in for hosts
//! (tests/cluster/ scripts, with this file's own names), the coordinator listens
//! on the bridge, and one `pstream-coord --agent` per host starts that host's
//! workers and reports their ends.
//!
//! Needs root and `ip` (iproute2); `PSTREAM_SKIP_CLUSTER=1` skips it, saying so.
//! The cluster is torn down when each test ends, passed or failed.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

/// The simulated hosts' names are this and a number; the bridge and subnet are
/// the host agents' tests' own (tests/cluster.rs has others).
const PREFIX: &str = "psag-h";
const BRIDGE: &str = "psagbr";
const SUBNET: &str = "10.80.0";

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
        let lock = File::create(std::env::temp_dir().join("pstream-agent-cluster-tests.lock"))
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

    /// A host agent (pstream-coord --agent) with `workers` workers on host `i`,
    /// the token on its standard input.
    fn agent(&self, i: usize, addr: &str, token: &Path, workers: u32) -> Guarded {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &format!("{PREFIX}{i}")])
            .arg(bin())
            .args([
                "--agent",
                "--connect",
                addr,
                "--workers",
                &workers.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .env_remove("RUST_LOG")
            .spawn()
            .expect("start an agent in a namespace");
        let line = std::fs::read_to_string(token).unwrap();
        let mut stdin = child.stdin.take().unwrap();
        std::io::Write::write_all(&mut stdin, line.trim().as_bytes()).unwrap();
        std::io::Write::write_all(&mut stdin, b"\n").unwrap();
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
            .arg("--errors")
            .arg(dir.join("err.txt"))
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

/// The same job's `--errors` and output run on this machine alone, with two local
/// workers, and its exit code.
fn local_run(dir: &Path, function: &str, extra: &[&str]) -> (Option<i32>, Vec<u8>, Vec<u8>) {
    let local = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args([
            "run",
            "--function",
            function,
            "--format",
            "jsonl",
            "--workers",
            "2",
        ])
        .arg("--input")
        .arg(dir.join("in.txt"))
        .arg("--output")
        .arg(local.path().join("out.txt"))
        .arg("--errors")
        .arg(local.path().join("err.txt"))
        .args(extra)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run the job locally");
    let read = |name: &str| std::fs::read(local.path().join(name)).unwrap_or_default();
    (out.status.code(), read("out.txt"), read("err.txt"))
}

#[test]
fn agents_on_three_hosts_compute_the_job_exactly_and_every_host_works() {
    let Some(cluster) = Cluster::up(3) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let expected = job(dir.path(), 60_000);
    let coordinator = Coordinator::start(&cluster, dir.path(), "slow_double", &[]);
    let token = dir.path().join("job.token");
    let agents: Vec<Guarded> = (1..=3)
        .map(|i| cluster.agent(i, &coordinator.addr, &token, 2))
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
    // Told to shut down, the agents exit 0, and leave nothing behind.
    for a in agents {
        assert_eq!(a.wait(PATIENCE), Some(0));
    }
    for i in 1..=3 {
        cluster.wait_empty(i, PATIENCE);
    }
}

#[test]
fn a_segfault_on_another_host_is_reported_as_on_this_one() {
    let Some(cluster) = Cluster::up(2) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    job(dir.path(), 1);
    let input: String = (0..300)
        .map(|i| {
            let fault = if i == 137 { "segv" } else { "none" };
            format!("{{\"fault\":\"{fault}\",\"value\":{i}}}\n")
        })
        .collect();
    std::fs::write(dir.path().join("in.txt"), input).unwrap();
    let extra = ["--retries", "1"];
    let (local_code, local_out, local_err) = local_run(dir.path(), "misbehave", &extra);
    assert_eq!(local_code, Some(1));
    let coordinator = Coordinator::start(&cluster, dir.path(), "misbehave", &extra);
    let token = dir.path().join("job.token");
    let agent = cluster.agent(2, &coordinator.addr, &token, 2);
    let (code, stderr) = coordinator.finish();
    assert_eq!(code, local_code, "{stderr}");
    let errors = std::fs::read(dir.path().join("err.txt")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&errors),
        String::from_utf8_lossy(&local_err),
        "the remote errors differ from a local run's"
    );
    assert!(
        String::from_utf8_lossy(&errors).contains("SIGSEGV"),
        "{}",
        String::from_utf8_lossy(&errors)
    );
    let out = std::fs::read(dir.path().join("out.txt")).unwrap();
    assert!(out == local_out, "the output differs from a local run's");
    let stats = stats(dir.path());
    let host = &stats["hosts"][cluster.host_ip(2)];
    assert!(
        host["crashes"].as_u64() >= Some(2),
        "the crashes are not counted on host 2: {stats}"
    );
    assert_eq!(host["lost"], 0, "{stats}");
    assert_eq!(agent.wait(PATIENCE), Some(0));
    cluster.wait_empty(2, PATIENCE);
}

#[test]
fn a_killed_coordinator_leaves_no_agent_and_no_worker_on_any_host() {
    let Some(cluster) = Cluster::up(3) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    job(dir.path(), 2_000_000);
    let coordinator = Coordinator::start(&cluster, dir.path(), "slow_double", &[]);
    let token = dir.path().join("job.token");
    let agents: Vec<Guarded> = (1..=3)
        .map(|i| cluster.agent(i, &coordinator.addr, &token, 2))
        .collect();
    wait_for_output(&dir.path().join("out.txt"));
    for i in 1..=3 {
        // The agent and its two workers.
        let deadline = Instant::now() + PATIENCE;
        while cluster.pids(i).len() < 3 {
            assert!(Instant::now() < deadline, "host {i}: {:?}", cluster.pids(i));
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(coordinator.child.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // The kernel closes the dead coordinator's connections; at the latest, the
    // agents give it up after the heartbeat timeout (10 s). The limit allows as
    // much again for a loaded machine: a hang guard, not a measure.
    for i in 1..=3 {
        cluster.wait_empty(i, Duration::from_secs(20));
    }
    for a in agents {
        assert_eq!(
            a.wait(PATIENCE),
            Some(1),
            "an agent whose coordinator died exits 1"
        );
    }
    drop(coordinator);
}

#[test]
fn a_host_cut_off_loses_nothing_and_its_agent_takes_its_workers_down() {
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
    let agents: Vec<Guarded> = (1..=3)
        .map(|i| cluster.agent(i, &coordinator.addr, &token, 2))
        .collect();
    wait_for_output(&dir.path().join("out.txt"));
    cluster.script("netns-partition.sh", &["cut", "2"]);
    let (code, stderr) = coordinator.finish();
    cluster.script("netns-partition.sh", &["heal", "2"]);
    assert_eq!(code, Some(0), "{stderr}");
    let out = std::fs::read_to_string(dir.path().join("out.txt")).unwrap();
    assert!(out == expected, "the output is not exact");
    let stats = stats(dir.path());
    assert_eq!(stats["items_failed"], 0, "{stats}");
    assert_eq!(stats["crashes"], 0, "nothing is charged: {stats}");
    assert!(
        stats["hosts"][cluster.host_ip(2)]["lost"].as_u64() >= Some(1),
        "host 2 not named lost: {stats}"
    );
    // The cut host's agent gives its silent coordinator up, kills its workers and
    // exits.
    cluster.wait_empty(2, Duration::from_secs(60));
    drop(agents);
}
