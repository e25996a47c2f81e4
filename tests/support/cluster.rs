//! The simulated cluster that the cluster tests share (tests/cluster.rs,
//! tests/agent_cluster.rs, tests/launchers.rs): network namespaces on a bridge stand
//! in for hosts (the scripts in tests/cluster/), with each test file's own
//! [`Names`] so that its clusters never touch another on this machine, and with an
//! sshd or a slurmd on each host if asked for.
//!
//! [`Cluster::up`] takes the file's lock and stands the cluster up; dropping the
//! cluster tears all of it down, also when the test fails or panics: Slurm, the
//! sshd's, every process in the namespaces, the namespaces, the bridge and the state
//! directory. Children are killed and reaped when dropped ([`Guarded`]), and every
//! wait has a deadline.
//!
//! Included with `#[path = "support/cluster.rs"] mod harness;` by the test files of
//! the `pstream-coord` package (it runs that package's binary).
#![allow(dead_code)] // Not every test file uses every helper.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A generous limit for anything that takes seconds: a hang guard, not a timing
/// assertion.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// The launcher binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pstream-coord"))
}

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/cluster")
}

/// One test file's names for its clusters: no two files share a prefix, bridge,
/// subnet, port or state directory, so that their clusters never collide.
pub struct Names {
    /// What the messages call these tests ("the cluster tests").
    pub tests: &'static str,
    /// What they need root for, for the message when they do not have it.
    pub root_for: &'static str,
    /// The hosts' namespaces are this and a number from 1 (`NETNS_PREFIX`).
    pub prefix: &'static str,
    /// The bridge in the root namespace (`NETNS_BRIDGE`).
    pub bridge: &'static str,
    /// The /24's first three numbers (`NETNS_SUBNET`): the bridge is `.1`, host `i`
    /// is `.(i + 1)`.
    pub subnet: &'static str,
    /// The lock file (in the temporary directory) held while a cluster is up: the
    /// files that name the same one have one cluster up at a time.
    pub lock: &'static str,
    /// The state directory (`CLUSTER_STATE_DIR`, in the temporary directory). A
    /// fixed place: a run killed before its teardown leaves its PIDs there, for the
    /// next run (and .ci/run's trap) to stop.
    pub state: &'static str,
    /// The port of the hosts' sshd's (`SSHD_PORT`), if the file uses
    /// [`Services::Ssh`].
    pub sshd_port: Option<u16>,
    /// slurmctld's port and the first slurmd's (`SLURM_CTLD_PORT`,
    /// `SLURM_SLURMD_PORT`), if the file uses [`Services::Slurm`].
    pub slurm_ports: Option<(u16, u16)>,
}

/// What a cluster runs on its hosts besides the tests' processes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Services {
    None,
    /// An sshd on each host.
    Ssh,
    /// A slurmd on each host, slurmctld (and munged) on the bridge.
    Slurm,
}

/// Simulated hosts, up while this lives.
pub struct Cluster {
    names: &'static Names,
    services: Services,
    state: PathBuf,
    _lock: Flock<File>,
}

impl Cluster {
    /// `hosts` namespaces on a bridge, with `services`; `None` (after saying so)
    /// if the tests are to be skipped.
    pub fn up(names: &'static Names, hosts: usize, services: Services) -> Option<Cluster> {
        let tests = names.tests;
        let root = nix::unistd::geteuid().is_root();
        let ip = Command::new("ip")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !(root && ip) {
            let why = if root {
                "they need `ip` (iproute2: apt-get install iproute2)".to_string()
            } else {
                format!("they need root ({})", names.root_for)
            };
            if std::env::var_os("PSTREAM_SKIP_CLUSTER").is_some() {
                eprintln!("SKIPPED: {tests} ({why}; PSTREAM_SKIP_CLUSTER is set)");
                return None;
            }
            panic!("{tests} cannot run: {why}; set PSTREAM_SKIP_CLUSTER=1 to skip them");
        }
        match services {
            Services::None => {}
            Services::Ssh => assert!(names.sshd_port.is_some(), "Names without an sshd port"),
            Services::Slurm => assert!(names.slurm_ports.is_some(), "Names without Slurm ports"),
        }
        let lock = File::create(std::env::temp_dir().join(names.lock))
            .expect("create the cluster tests' lock file");
        let lock = Flock::lock(lock, FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .expect("lock the cluster tests' lock file");
        let state = std::env::temp_dir().join(names.state);
        std::fs::create_dir_all(&state).expect("create the cluster's state directory");
        // munged refuses a socket under a directory that is not world-executable.
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cluster = Cluster {
            names,
            services,
            state,
            _lock: lock,
        };
        // Whatever a killed earlier run left behind goes first. From here on, a
        // failure drops `cluster`, which tears down what is up.
        cluster.down();
        cluster.script("netns-up.sh", &[&hosts.to_string()]);
        match services {
            Services::None => {}
            Services::Ssh => cluster.script("sshd-up.sh", &[]),
            Services::Slurm => cluster.script("slurm-up.sh", &[]),
        }
        Some(cluster)
    }

    /// One of the scripts, with this cluster's names.
    fn command(&self, name: &str) -> Command {
        let names = self.names;
        let mut cmd = Command::new("bash");
        cmd.arg(scripts().join(name))
            .env("CLUSTER_STATE_DIR", &self.state)
            .env("NETNS_PREFIX", names.prefix)
            .env("NETNS_BRIDGE", names.bridge)
            .env("NETNS_SUBNET", names.subnet)
            .stdin(Stdio::null());
        if let Some(port) = names.sshd_port {
            cmd.env("SSHD_PORT", port.to_string());
        }
        if let Some((ctld, slurmd)) = names.slurm_ports {
            cmd.env("SLURM_CTLD_PORT", ctld.to_string())
                .env("SLURM_SLURMD_PORT", slurmd.to_string())
                // A slurmd in each namespace.
                .env("SLURM_NETNS", "1")
                // Two workers per node at most: the machine is shared.
                .env("SLURM_CPUS", "2")
                // The script's own smoke test (srun -N1 -n2, then srun -N3) failed
                // once when the second found the first's CPUs still held ("queued
                // and waiting for resources"); the tests use the cluster fully.
                .env("SLURM_SKIP_SMOKE", "1");
        }
        cmd
    }

    /// Run one of the scripts, with this cluster's names; it must succeed.
    pub fn script(&self, name: &str, args: &[&str]) {
        let out = self
            .command(name)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run {name}: {e}"));
        assert!(
            out.status.success(),
            "{name} {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Everything down, in the scripts' order: Slurm, sshd's, namespaces (with
    /// whatever runs in them). Each script does nothing where nothing is up, so
    /// this also stops what an earlier, killed run of this file left.
    fn down(&self) {
        let names = self.names;
        let mut scripts = Vec::new();
        if names.slurm_ports.is_some() {
            scripts.push("slurm-down.sh");
        }
        if names.sshd_port.is_some() {
            scripts.push("sshd-down.sh");
        }
        scripts.push("netns-down.sh");
        for name in scripts {
            let _ = self.command(name).output();
        }
    }

    /// Pull host `i`'s cable (its bridge port goes down).
    pub fn cut(&self, i: usize) {
        self.script("netns-partition.sh", &["cut", &i.to_string()]);
    }

    /// Plug host `i`'s cable back in.
    pub fn heal(&self, i: usize) {
        self.script("netns-partition.sh", &["heal", &i.to_string()]);
    }

    /// The coordinator's address on the bridge.
    pub fn coordinator_ip(&self) -> String {
        format!("{}.1", self.names.subnet)
    }

    /// Host `i`'s address.
    pub fn host_ip(&self, i: usize) -> String {
        format!("{}.{}", self.names.subnet, i + 1)
    }

    /// Host `i`'s namespace.
    pub fn host(&self, i: usize) -> String {
        format!("{}{i}", self.names.prefix)
    }

    /// `program` to be run on host `i` (`ip netns exec`).
    pub fn exec(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.host(i)]).arg(program);
        cmd
    }

    /// The processes running on host `i`.
    pub fn pids(&self, i: usize) -> Vec<u32> {
        let out = Command::new("ip")
            .args(["netns", "pids", &self.host(i)])
            .output()
            .expect("ip netns pids");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// The command lines of what runs on host `i`, its sshd or slurmd aside.
    pub fn leftovers(&self, i: usize) -> Vec<String> {
        self.pids(i)
            .into_iter()
            .filter_map(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| match self.services {
                Services::None => true,
                Services::Ssh => !c.contains("/usr/sbin/sshd -D"),
                Services::Slurm => !c.contains("slurmd"),
            })
            .collect()
    }

    /// Wait until nothing runs on host `i` but its sshd or slurmd.
    pub fn wait_idle(&self, i: usize, limit: Duration) {
        poll(limit, Duration::from_millis(50), || {
            let left = self.leftovers(i);
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("host {i} still runs {left:?}"))
            }
        });
    }

    /// The ssh command for `--ssh-command`: this cluster's port and key.
    pub fn ssh_command(&self) -> String {
        format!(
            "ssh -p {} -i {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
             -o LogLevel=ERROR -o BatchMode=yes -o ConnectTimeout=5",
            self.names.sshd_port.expect("Names without an sshd port"),
            self.state.join("sshd/id_ed25519").display()
        )
    }

    /// A Slurm client command (`salloc`, `sbatch`, `scontrol`) for this cluster.
    pub fn slurm(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        for (name, _) in std::env::vars_os() {
            // Not inside another allocation's variables.
            if name.to_string_lossy().starts_with("SLURM_") {
                cmd.env_remove(name);
            }
        }
        cmd.env("SLURM_CONF", self.state.join("slurm/slurm.conf"));
        cmd
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Also when the test failed: nothing is left behind. (The lock goes after.)
        self.down();
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// Ask `probe` every `every` until it says `Ok`, for at most `limit`; then fail
/// the test with what it said last.
pub fn poll<T>(
    limit: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match probe() {
            Ok(value) => return value,
            Err(why) => assert!(Instant::now() < deadline, "{why} (after {limit:?})"),
        }
        std::thread::sleep(every);
    }
}

/// A child process, killed and reaped when dropped.
pub struct Guarded(Option<Child>);

impl Guarded {
    pub fn new(child: Child) -> Guarded {
        Guarded(Some(child))
    }

    pub fn pid(&self) -> u32 {
        self.0.as_ref().unwrap().id()
    }

    /// Send it `signal` (it stays guarded: reaped when waited for or dropped).
    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid() as i32), signal).unwrap();
    }

    /// Whether it has not exited yet.
    pub fn running(&mut self) -> bool {
        self.0
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// Wait for it to exit (with a deadline: then it is killed and the test
    /// fails); its exit code.
    pub fn wait(mut self, limit: Duration) -> Option<i32> {
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

/// A `pstream-coord run` (or any command), its stderr read on a thread and shown
/// in the test's output as it comes.
pub struct Run {
    pub child: Guarded,
    stderr: mpsc::Receiver<String>,
}

impl Run {
    pub fn start(mut cmd: Command) -> Run {
        cmd.stdin(Stdio::null())
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
        Run {
            child: Guarded::new(child),
            stderr: rx,
        }
    }

    /// Wait (at most `limit`) for a line of stderr that contains `needle`; that
    /// line. The lines before it are passed over.
    pub fn line_with(&self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .stderr
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no line with {needle:?} on stderr"));
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// Wait (at most `limit`) for it to end; its exit code and the rest of its
    /// stderr.
    pub fn finish(self, limit: Duration) -> (Option<i32>, String) {
        let code = self.child.wait(limit);
        let mut text = String::new();
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(5)) {
            text.push_str(&line);
            text.push('\n');
        }
        (code, text)
    }
}

/// `pstream-coord run` of `function` over the job in `dir` (`in.txt`, `out.txt`,
/// `stats.json`), waiting up to a minute for workers, then `extra`.
pub fn run_command(dir: &Path, function: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args(["run", "--function", function, "--format", "jsonl"])
        .arg("--input")
        .arg(dir.join("in.txt"))
        .arg("--output")
        .arg(dir.join("out.txt"))
        .arg("--stats-json")
        .arg(dir.join("stats.json"))
        .args(["--wait-workers", "60s"])
        .args(extra);
    cmd
}

/// A coordinator listening on the bridge for workers that join it.
pub struct Coordinator {
    pub run: Run,
    /// The `HOST:PORT` workers join at.
    pub addr: String,
}

impl Coordinator {
    /// [`run_command`] listening on the bridge, with the job's token file
    /// (`job.token` in `dir`).
    pub fn start(cluster: &Cluster, dir: &Path, function: &str, extra: &[&str]) -> Coordinator {
        let mut cmd = run_command(dir, function, &[]);
        cmd.args(["--listen", &format!("{}:0", cluster.coordinator_ip())])
            .arg("--token-file")
            .arg(dir.join("job.token"))
            .args(extra);
        let run = Run::start(cmd);
        let line = run.line_with("listening on ", PATIENCE);
        let addr = line.split("listening on ").nth(1).unwrap();
        let addr = addr.split(';').next().unwrap().to_string();
        Coordinator { run, addr }
    }

    /// Wait for the job to end; its exit code and the rest of its stderr.
    pub fn finish(self) -> (Option<i32>, String) {
        self.run.finish(PATIENCE)
    }
}

/// Numbers 1..=n as `dir`'s input.
pub fn write_numbers(dir: &Path, n: u64) {
    let input: String = (1..=n).map(|i| format!("{i}\n")).collect();
    std::fs::write(dir.join("in.txt"), input).unwrap();
}

/// Numbers 1..=n as input and a token file (`job.token`) in `dir`; the doubled
/// numbers, the expected output.
pub fn job(dir: &Path, n: u64) -> String {
    write_numbers(dir, n);
    pstream::protocol::auth::create_token_file(&dir.join("job.token")).unwrap();
    (1..=n).map(|i| format!("{}\n", 2 * i)).collect()
}

/// The JSON in `path`.
pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The `--stats-json` of the job in `dir`.
pub fn stats(dir: &Path) -> serde_json::Value {
    read_json(&dir.join("stats.json"))
}

/// Every host of `hosts` did some of the job's items, by the job's `stats`.
pub fn assert_every_host_worked(
    cluster: &Cluster,
    stats: &serde_json::Value,
    hosts: impl IntoIterator<Item = usize>,
) {
    for i in hosts {
        let host = &stats["hosts"][cluster.host_ip(i)];
        assert!(
            host["items"].as_u64() > Some(0),
            "host {i} did no work: {stats}"
        );
    }
}

/// Every host of `hosts` had `workers` workers, by the job's `stats`.
pub fn assert_workers_on_every_host(
    cluster: &Cluster,
    stats: &serde_json::Value,
    hosts: impl IntoIterator<Item = usize>,
    workers: usize,
) {
    for i in hosts {
        let host = &stats["hosts"][cluster.host_ip(i)];
        assert_eq!(host["workers"], workers, "host {i}: {stats}");
    }
}

/// Wait (at most `limit`) until `path` has some bytes (the job is under way).
pub fn wait_for_output(path: &Path, limit: Duration) {
    poll(
        limit,
        Duration::from_millis(20),
        || match std::fs::metadata(path).map_or(0, |m| m.len()) {
            0 => Err("no output came".to_string()),
            _ => Ok(()),
        },
    );
}
