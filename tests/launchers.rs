//! The launchers that start host agents for `pstream-coord run`: `--ssh` to
//! simulated hosts (network namespaces, each with its own sshd, from the scripts in
//! tests/cluster/), and `--launcher slurm` on a Slurm cluster whose nodes are those
//! hosts. The names, subnet and ports are this file's own, so that its clusters
//! never touch another on this machine.
//!
//! Needs root, `ip` (iproute2), and for the ssh tests openssh-server, for the Slurm
//! tests munge and slurm (the scripts install them with apt-get when missing).
//! Without root the tests fail, saying so; set `PSTREAM_SKIP_CLUSTER=1` to skip
//! them instead (each says that it was skipped). They take the cluster tests' lock,
//! so that one cluster is up at a time, and tear everything down when they end,
//! passed or failed.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

/// The simulated hosts' names are this and a number; bridge, subnet and ports
/// are this file's own.
const PREFIX: &str = "psln-h";
const BRIDGE: &str = "pslnbr";
const SUBNET: &str = "10.81.0";
const SSHD_PORT: &str = "2251";
const SLURM_CTLD_PORT: &str = "16851";
const SLURM_SLURMD_PORT: &str = "16852";

/// A generous limit for anything that takes seconds: a hang guard, not a timing
/// assertion.
const PATIENCE: Duration = Duration::from_secs(180);

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pstream-coord"))
}

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/cluster")
}

/// What a cluster runs besides its hosts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Services {
    Ssh,
    Slurm,
}

/// Simulated hosts with an sshd or a slurmd each, up while this lives.
struct Cluster {
    state: State,
    services: Services,
    _lock: Flock<File>,
}

impl Cluster {
    /// `hosts` namespaces on a bridge, with `services`; `None` (after saying so)
    /// if the tests are to be skipped.
    fn up(hosts: usize, services: Services) -> Option<Cluster> {
        if !nix::unistd::geteuid().is_root() {
            let why = "they need root (network namespaces, sshd, slurmd)";
            if std::env::var_os("PSTREAM_SKIP_CLUSTER").is_some() {
                eprintln!("SKIPPED: the launcher tests ({why}; PSTREAM_SKIP_CLUSTER is set)");
                return None;
            }
            panic!("the launcher tests cannot run: {why}; set PSTREAM_SKIP_CLUSTER=1 to skip them");
        }
        let lock = File::create(std::env::temp_dir().join("pstream-cluster-tests.lock"))
            .expect("create the cluster tests' lock file");
        let lock = Flock::lock(lock, FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .expect("lock the cluster tests' lock file");
        // One fixed place (this file's clusters are one at a time, under the lock):
        // a run killed before its teardown leaves its PIDs there, for the next run
        // (and .ci/run's trap) to stop.
        let state = State(std::env::temp_dir().join("pstream-launchers-cluster"));
        std::fs::create_dir_all(state.path()).unwrap();
        // munged refuses a socket under a directory that is not world-executable.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(state.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let cluster = Cluster {
            state,
            services,
            _lock: lock,
        };
        // Whatever a killed earlier run left behind goes first.
        cluster.down();
        cluster.script("netns-up.sh", &[&hosts.to_string()]);
        match services {
            Services::Ssh => cluster.script("sshd-up.sh", &[]),
            Services::Slurm => cluster.script("slurm-up.sh", &[]),
        }
        Some(cluster)
    }

    fn command(&self, name: &str) -> Command {
        let mut cmd = Command::new("bash");
        cmd.arg(scripts().join(name))
            .env("CLUSTER_STATE_DIR", self.state.path())
            .env("NETNS_PREFIX", PREFIX)
            .env("NETNS_BRIDGE", BRIDGE)
            .env("NETNS_SUBNET", SUBNET)
            .env("SSHD_PORT", SSHD_PORT)
            .env("SLURM_CTLD_PORT", SLURM_CTLD_PORT)
            .env("SLURM_SLURMD_PORT", SLURM_SLURMD_PORT)
            .env("SLURM_NETNS", "1")
            // Two workers per node at most: the machine is shared.
            .env("SLURM_CPUS", "2")
            // The script's own smoke test (srun -N1 -n2, then srun -N3) failed
            // once when the second found the first's CPUs still held ("queued
            // and waiting for resources"); the tests here use the cluster fully.
            .env("SLURM_SKIP_SMOKE", "1")
            .stdin(Stdio::null());
        cmd
    }

    /// Run one of the scripts, with this cluster's names; it must succeed.
    fn script(&self, name: &str, args: &[&str]) {
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

    /// Everything down, in the scripts' order: slurm, sshd, namespaces.
    fn down(&self) {
        let scripts: &[&str] = match self.services {
            Services::Ssh => &["sshd-down.sh", "netns-down.sh"],
            Services::Slurm => &["slurm-down.sh", "netns-down.sh"],
        };
        for name in scripts {
            let _ = self.command(name).output();
        }
    }

    /// Host `i`'s address.
    fn host_ip(&self, i: usize) -> String {
        format!("{SUBNET}.{}", i + 1)
    }

    /// The ssh command for `--ssh-command`: this cluster's port and key.
    fn ssh_command(&self) -> String {
        format!(
            "ssh -p {SSHD_PORT} -i {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
             -o LogLevel=ERROR -o BatchMode=yes -o ConnectTimeout=5",
            self.state.path().join("sshd/id_ed25519").display()
        )
    }

    /// A Slurm client command (`salloc`, `sbatch`, `scontrol`) for this cluster.
    fn slurm(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        for (name, _) in std::env::vars_os() {
            // Not inside another allocation's variables.
            if name.to_string_lossy().starts_with("SLURM_") {
                cmd.env_remove(name);
            }
        }
        cmd.env("SLURM_CONF", self.state.path().join("slurm/slurm.conf"));
        cmd
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

    /// The command lines of what runs on host `i` (its sshd or slurmd aside).
    fn commands(&self, i: usize) -> Vec<String> {
        self.pids(i)
            .into_iter()
            .filter_map(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| !c.contains("/usr/sbin/sshd -D") && !c.contains("slurmd"))
            .collect()
    }

    /// Wait until only the host's sshd (or slurmd) runs there.
    fn wait_idle(&self, i: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let left = self.commands(i);
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "host {i} still runs {left:?} after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Also when the test failed: nothing is left behind.
        self.down();
        let _ = std::fs::remove_dir_all(self.state.path());
    }
}

/// The clusters' state directory (`CLUSTER_STATE_DIR`).
struct State(PathBuf);

impl State {
    fn path(&self) -> &Path {
        &self.0
    }
}

/// A child process, killed and reaped when dropped.
struct Guarded(Option<Child>);

impl Guarded {
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

    fn running(&mut self) -> bool {
        self.0
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
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

/// A `pstream-coord run` (or any command), its stderr read on a thread.
struct Run {
    child: Guarded,
    stderr: mpsc::Receiver<String>,
}

impl Run {
    fn start(mut cmd: Command) -> Run {
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
            child: Guarded(Some(child)),
            stderr: rx,
        }
    }

    /// Wait for it to end; its exit code and its stderr.
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

/// `pstream-coord run` of `slow_double` over the job in `dir`.
fn coordinator(dir: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args(["run", "--function", "slow_double", "--format", "jsonl"])
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

/// Numbers 1..=n as input; the output of the same job on this machine alone.
fn job(dir: &Path, n: u64) -> Vec<u8> {
    let input: String = (1..=n).map(|i| format!("{i}\n")).collect();
    std::fs::write(dir.join("in.txt"), input).unwrap();
    let local = tempfile::tempdir().unwrap();
    std::fs::copy(dir.join("in.txt"), local.path().join("in.txt")).unwrap();
    let (code, stderr) = Run::start(coordinator(local.path(), &["--workers", "2"])).finish();
    assert_eq!(code, Some(0), "the one-machine run failed: {stderr}");
    let out = std::fs::read(local.path().join("out.txt")).unwrap();
    assert!(out.len() as u64 > n, "the one-machine run wrote too little");
    out
}

fn stats(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("stats.json")).unwrap()).unwrap()
}

/// The `pstream.*` directories that `--transfer` makes in the hosts' temporary
/// directory (the simulated hosts share this machine's filesystem).
fn transferred() -> Vec<PathBuf> {
    std::fs::read_dir("/tmp")
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("pstream."))
        })
        .collect()
}

#[test]
fn ssh_to_three_hosts_is_exact_and_every_host_works() {
    let Some(cluster) = Cluster::up(3, Services::Ssh) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let expected = job(dir.path(), 60_000);
    let before = transferred();
    let hosts: Vec<String> = (1..=3)
        .map(|i| format!("root@{}", cluster.host_ip(i)))
        .collect();
    // --transfer: the coordinator's own binary (the plugin here) is copied to
    // each host and run from there.
    let ssh = cluster.ssh_command();
    let run = Run::start(coordinator(
        dir.path(),
        &[
            "--ssh",
            &hosts.join(","),
            "--ssh-command",
            &ssh,
            "--workers-per-host",
            "2",
            "--transfer",
        ],
    ));
    let (code, stderr) = run.finish();
    assert_eq!(code, Some(0), "{stderr}");
    let out = std::fs::read(dir.path().join("out.txt")).unwrap();
    assert!(
        out == expected,
        "the output differs from the one-machine run's"
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
    // Agents and workers are gone from every host, and so are the copies.
    for i in 1..=3 {
        cluster.wait_idle(i, Duration::from_secs(30));
    }
    assert_eq!(transferred(), before, "a copied program was left behind");
}

#[test]
fn the_token_is_on_no_command_line_and_in_no_environment() {
    let Some(cluster) = Cluster::up(2, Services::Ssh) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    job(dir.path(), 150_000);
    // A token file, so that this test knows the token it looks for.
    let token_file = dir.path().join("job.token");
    let token = pstream::protocol::auth::create_token_file(&token_file)
        .unwrap()
        .to_hex();
    let hosts: Vec<String> = (1..=2)
        .map(|i| format!("root@{}", cluster.host_ip(i)))
        .collect();
    let ssh = cluster.ssh_command();
    let mut run = Run::start(coordinator(
        dir.path(),
        &[
            "--ssh",
            &hosts.join(","),
            "--ssh-command",
            &ssh,
            "--workers-per-host",
            "2",
            "--token-file",
            token_file.to_str().unwrap(),
        ],
    ));
    // While the job runs: every process's command line (what `ps` shows, on this
    // machine and the hosts, which share its process table) and environment.
    let mut looks = 0;
    let mut agents_seen = false;
    while run.child.running() {
        let ps = Command::new("ps")
            .args(["-eww", "-o", "pid=,args="])
            .output()
            .expect("ps");
        let ps = String::from_utf8_lossy(&ps.stdout);
        for line in ps.lines() {
            assert!(!line.contains(&token), "the token is in `ps`: {line}");
        }
        agents_seen |= ps.lines().any(|l| l.contains("--agent"));
        for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
            if let Ok(environ) = std::fs::read(entry.path().join("environ")) {
                assert!(
                    !String::from_utf8_lossy(&environ).contains(&token),
                    "the token is in the environment of process {}",
                    entry.file_name().to_string_lossy()
                );
            }
        }
        looks += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, stderr) = run.finish();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(agents_seen, "no agent was seen running in {looks} looks");
}

#[test]
fn a_host_whose_ssh_fails_is_named_and_the_others_do_the_job() {
    let Some(cluster) = Cluster::up(3, Services::Ssh) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let expected = job(dir.path(), 60_000);
    // Host 3 is down (its cable pulled); host 2 refuses the user.
    cluster.script("netns-partition.sh", &["cut", "3"]);
    let down = format!("root@{}", cluster.host_ip(3));
    let refused = format!("nobody@{}", cluster.host_ip(2));
    let hosts = [
        format!("root@{}", cluster.host_ip(1)),
        refused.clone(),
        down.clone(),
    ];
    let ssh = cluster.ssh_command();
    let (code, stderr) = Run::start(coordinator(
        dir.path(),
        &[
            "--ssh",
            &hosts.join(","),
            "--ssh-command",
            &ssh,
            "--workers-per-host",
            "2",
        ],
    ))
    .finish();
    cluster.script("netns-partition.sh", &["heal", "3"]);
    assert_eq!(code, Some(0), "{stderr}");
    let out = std::fs::read(dir.path().join("out.txt")).unwrap();
    assert!(out == expected, "the output is not exact");
    for (host, said) in [(&refused, "Permission denied"), (&down, "port 2251")] {
        let named = stderr
            .lines()
            .find(|l| l.starts_with(&format!("pstream: host {host}: ")))
            .unwrap_or_else(|| panic!("{host} is not named: {stderr}"));
        assert!(named.contains(said), "{named}");
        assert!(named.contains("(exit status 255)"), "{named}");
    }
    let stats = stats(dir.path());
    assert!(stats["hosts"][cluster.host_ip(1)]["items"].as_u64() == Some(60_000));

    // No host at all (no sshd on port 2): a clear error naming each, at once.
    let hosts = [1, 2].map(|i| format!("root@{}", cluster.host_ip(i)));
    let ssh = ssh.replace(&format!("-p {SSHD_PORT}"), "-p 2");
    let (code, stderr) = Run::start(coordinator(
        dir.path(),
        &["--ssh", &hosts.join(","), "--ssh-command", &ssh],
    ))
    .finish();
    assert_eq!(code, Some(3), "{stderr}");
    let failed = stderr
        .lines()
        .find_map(|l| l.split("no host could start workers: ").nth(1))
        .unwrap_or_else(|| panic!("no clear error: {stderr}"));
    for host in hosts {
        assert!(
            failed.contains(&format!(
                "{host}: ssh exited before the job ended (exit status 255): ssh: connect to \
                 host {} port 2: Connection refused",
                &host[5..]
            )),
            "{failed}"
        );
    }
}

#[test]
fn the_slurm_launcher_outside_an_allocation_says_to_use_sbatch_or_salloc() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.txt"), "1\n").unwrap();
    let mut cmd = coordinator(dir.path(), &["--launcher", "slurm"]);
    cmd.env_remove("SLURM_JOB_ID");
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("SLURM_JOB_ID is not set")
            && stderr.contains("sbatch")
            && stderr.contains("salloc"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("out.txt").exists(),
        "the output was touched"
    );
}

/// Files to hash, and their list (`files.txt`) in `dir`; the sums a one-machine
/// run writes.
fn hash_job(dir: &Path, n: usize) -> Vec<u8> {
    let data = dir.join("data");
    std::fs::create_dir(&data).unwrap();
    let mut list = String::new();
    for i in 0..n {
        let file = data.join(format!("f{i}"));
        std::fs::write(&file, format!("file {i}\n").repeat(1500 + i % 50)).unwrap();
        list.push_str(&format!("{}\n", file.display()));
    }
    std::fs::write(dir.join("files.txt"), list).unwrap();
    let mut cmd = Command::new(bin());
    cmd.args(["run", "--function", "sha256sum", "--workers", "2"])
        .arg("--input")
        .arg(dir.join("files.txt"))
        .arg("--output")
        .arg(dir.join("local.txt"));
    let (code, stderr) = Run::start(cmd).finish();
    assert_eq!(code, Some(0), "the one-machine run failed: {stderr}");
    let sums = std::fs::read(dir.join("local.txt")).unwrap();
    std::fs::remove_file(dir.join("local.txt")).unwrap();
    assert_eq!(sums.iter().filter(|&&b| b == b'\n').count(), n);
    sums
}

#[test]
fn the_slurm_launcher_under_salloc_is_exact_with_workers_on_every_node() {
    let Some(cluster) = Cluster::up(3, Services::Slurm) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let expected = job(dir.path(), 60_000);
    let mut salloc = cluster.slurm("salloc");
    salloc
        .args(["-N3", "--ntasks-per-node=2", "--time=5"])
        .arg(bin())
        .args(coordinator(dir.path(), &["--launcher", "slurm"]).get_args());
    let (code, stderr) = Run::start(salloc).finish();
    assert_eq!(code, Some(0), "{stderr}");
    let out = std::fs::read(dir.path().join("out.txt")).unwrap();
    assert!(
        out == expected,
        "the output differs from the one-machine run's"
    );
    let stats = stats(dir.path());
    for i in 1..=3 {
        let host = &stats["hosts"][cluster.host_ip(i)];
        assert_eq!(host["workers"], 2, "host {i}: {stats}");
        assert!(
            host["items"].as_u64() > Some(0),
            "host {i} did no work: {stats}"
        );
    }
    for i in 1..=3 {
        cluster.wait_idle(i, Duration::from_secs(30));
    }
}

/// The `sbatch` script of docs/cluster.md, as it is there.
fn documented_sbatch_script() -> String {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/cluster.md"),
    )
    .unwrap();
    doc.split("```sh\n")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .find(|block| block.contains("#SBATCH") && block.contains("--launcher slurm"))
        .expect("docs/cluster.md has an sbatch script with --launcher slurm")
        .to_string()
}

#[test]
fn the_documented_sbatch_script_runs_exactly() {
    let Some(cluster) = Cluster::up(3, Services::Slurm) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let expected = hash_job(dir.path(), 3_000);
    // What the script names: the plugin in the job's directory (pstream-coord
    // serves sha256sum), pstream-coord on the PATH.
    std::os::unix::fs::symlink(bin(), dir.path().join("my-plugin")).unwrap();
    std::fs::write(dir.path().join("job.sh"), documented_sbatch_script()).unwrap();
    let path = format!(
        "{}:{}",
        bin().parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = cluster
        .slurm("sbatch")
        .args(["--parsable", "--time=5", "-D"])
        .arg(dir.path())
        .arg(dir.path().join("job.sh"))
        .env("PATH", &path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sbatch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // Its end, from scontrol (a completed job stays visible for a minute).
    let deadline = Instant::now() + PATIENCE;
    let record = loop {
        let out = cluster
            .slurm("scontrol")
            .args(["show", "job", "-o", &id])
            .output()
            .unwrap();
        let record = String::from_utf8_lossy(&out.stdout).to_string();
        let ended = ["COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"]
            .iter()
            .any(|s| record.contains(&format!("JobState={s} ")));
        if ended {
            break record;
        }
        assert!(Instant::now() < deadline, "job {id} did not end: {record}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let log =
        std::fs::read_to_string(dir.path().join(format!("pstream-{id}.log"))).unwrap_or_default();
    assert!(
        record.contains("JobState=COMPLETED ") && record.contains("ExitCode=0:0"),
        "{record}\n{log}"
    );
    let sums = std::fs::read(dir.path().join("sums.txt")).unwrap();
    assert!(
        sums == expected,
        "the sums differ from the one-machine run's\n{log}"
    );
    // Workers on every node (2 CPUs each: --ntasks-per-node=2; the 40 MB to hash
    // take the job long enough for all to join). Whether each got items is up
    // to the race: 3,000 items fit in the one batch of the first to join.
    let stats = stats_at(&dir.path().join(format!("stats-{id}.json")));
    for i in 1..=3 {
        let host = &stats["hosts"][cluster.host_ip(i)];
        assert_eq!(host["workers"], 2, "host {i}: {stats}");
    }
}

fn stats_at(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn launcher_options_that_cannot_work_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.txt"), "1\n").unwrap();
    let cases: [(&[&str], &str); 6] = [
        (&["--launcher", "none"], "--launcher none starts no worker"),
        (&["--launcher", "ssh"], "--launcher ssh needs hosts"),
        (&["--ssh", "a", "--launcher", "local"], "drop one of them"),
        (
            &["--ssh", "a", "--ssh-command", "ssh 'open"],
            "a single quote is not closed",
        ),
        (&["--ssh", "a:0"], "0 workers"),
        (
            &["--transfer"],
            "--transfer is for workers started over ssh",
        ),
    ];
    for (args, said) in cases {
        let out = coordinator(dir.path(), args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(said), "{args:?}: {stderr}");
        assert!(
            !dir.path().join("out.txt").exists(),
            "{args:?} touched the output"
        );
    }
}
