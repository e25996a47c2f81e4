//! Scenario `tcp`: workers on other hosts, simulated by network namespaces on a
//! bridge (the scripts in tests/cluster/, with this scenario's own names), joining
//! the coordinator over TCP with `--connect`.
//!
//! * `double` over TCP (one worker per host) against the same pool size over the
//!   Unix socket;
//! * SHA-256 over 1 KiB items to one host whose link is limited to 1 Gbit/s each
//!   way (`tc qdisc ... tbf`): how much of the link the job fills;
//! * fan-out: 512 workers on 16 hosts, started by a host agent per host over ssh
//!   (the pool's ssh launcher; by `ip netns exec` if no sshd can run; and, for the
//!   start time, also by `ip netns exec` and one by one), how long until all have
//!   joined, and `double`'s throughput with them against 2 workers (each round
//!   also with the CPU time and context switches of every process of this
//!   binary, ssh-started ones included, and of the 512 workers idle for 1 s;
//!   with `PSTREAM_BENCH_TCP_FAN_ONLY` set, only this part runs);
//! * a per-line job over ssh: `pstream-coord run --ssh` against GNU parallel
//!   `--sshlogin`, on sshd's in the namespaces.
//!
//! Needs root, `ip` and `tc` (iproute2); skipped with a note otherwise. The
//! namespaces (and the qdiscs on their links) are torn down at the end, also when a
//! measurement fails.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use pstream::{HostLauncher, ProcessPool};
use pstream_examples::{sha256_bytes, Blob};

use crate::chart::{Bar, Chart, Plot};
use crate::report::{count, median, median_ratio, rate, ratio, secs, timed, Summary, Table};
use crate::scenarios::{blob, fold, pstream_double, BLOB};
use crate::{BoxError, Settings};

/// This scenario's simulated hosts: names, bridge and subnet of its own, so that it
/// never touches a test's cluster.
const PREFIX: &str = "psfo-h";
const BRIDGE: &str = "psfobr";
const SUBNET: &str = "10.82.0";
/// The port of this scenario's sshd's (one per simulated host).
const SSHD_PORT: &str = "2261";

/// The fan-out: hosts and workers per host.
const FAN_HOSTS: usize = 16;
const FAN_PER_HOST: usize = 32;
/// The link's rate for the SHA-256 run, in bits per second (and as tc says it).
const LINK_BITS: f64 = 1e9;
const LINK_TC: &str = "1gbit";

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/cluster")
}

/// Why the scenario cannot run here, if it cannot.
fn missing() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("it needs root (network namespaces, tc)".into());
    }
    for (tool, arg) in [("ip", "-V"), ("tc", "-V")] {
        let ok = Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Some(format!("it needs `{tool}` (apt-get install iproute2)"));
        }
    }
    if !scripts().join("netns-up.sh").exists() {
        return Some(format!(
            "the namespace scripts are not at {} (run it from the repository)",
            scripts().display()
        ));
    }
    None
}

/// Simulated hosts, up while this lives; torn down (with their qdiscs and every
/// process in them) when dropped.
struct Net {
    state: tempfile::TempDir,
    _lock: Flock<File>,
}

impl Net {
    fn up(hosts: usize) -> Result<Net, BoxError> {
        // The cluster tests' lock: one cluster at a time on this machine.
        let lock = File::create(std::env::temp_dir().join("pstream-cluster-tests.lock"))?;
        let lock = Flock::lock(lock, FlockArg::LockExclusive).map_err(|(_, e)| e)?;
        let net = Net {
            state: tempfile::tempdir()?,
            _lock: lock,
        };
        net.script("netns-down.sh", &[])?;
        net.script("netns-up.sh", &[&hosts.to_string()])?;
        Ok(net)
    }

    fn script(&self, name: &str, args: &[&str]) -> Result<(), BoxError> {
        let out = Command::new("bash")
            .arg(scripts().join(name))
            .args(args)
            .env("CLUSTER_STATE_DIR", self.state.path())
            .env("NETNS_PREFIX", PREFIX)
            .env("NETNS_BRIDGE", BRIDGE)
            .env("NETNS_SUBNET", SUBNET)
            .env("SSHD_PORT", SSHD_PORT)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(format!(
                "{name} {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        Ok(())
    }

    /// Limit host `i`'s link to `rate` each way: its end's egress (results) and the
    /// bridge port's egress (items).
    fn shape(&self, i: usize, rate: &str) -> Result<(), BoxError> {
        let tbf = [
            "root", "tbf", "rate", rate, "burst", "512kb", "latency", "20ms",
        ];
        run(
            "tc",
            &[
                &["qdisc", "replace", "dev", &format!("{BRIDGE}p{i}")][..],
                &tbf,
            ]
            .concat(),
        )?;
        run(
            "ip",
            &[
                &[
                    "netns",
                    "exec",
                    &format!("{PREFIX}{i}"),
                    "tc",
                    "qdisc",
                    "replace",
                    "dev",
                    "eth0",
                ][..],
                &tbf,
            ]
            .concat(),
        )
    }

    /// Take the limits off host `i`'s link.
    fn unshape(&self, i: usize) {
        let _ = run(
            "tc",
            &["qdisc", "del", "dev", &format!("{BRIDGE}p{i}"), "root"],
        );
        let ns = format!("{PREFIX}{i}");
        let _ = run(
            "ip",
            &[
                "netns", "exec", &ns, "tc", "qdisc", "del", "dev", "eth0", "root",
            ],
        );
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // sshd's first (if any were started), then the namespaces: deleting them
        // and their veths deletes the qdiscs too.
        if self.state.path().join("sshd").exists() {
            if let Err(e) = self.script("sshd-down.sh", &[]) {
                eprintln!("pstream-bench: stopping the sshd's: {e}");
            }
        }
        if let Err(e) = self.script("netns-down.sh", &[]) {
            eprintln!("pstream-bench: tearing the namespaces down: {e}");
        }
    }
}

fn run(program: &str, args: &[&str]) -> Result<(), BoxError> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(())
}

/// Worker processes in the namespaces, killed and reaped when dropped.
struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
        }
        for child in &mut self.0 {
            let _ = child.wait();
        }
    }
}

/// How a host's workers are started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// Each by hand: `ip netns exec HOST BIN --connect ADDR`, one per worker.
    Connect,
    /// One host agent per host starts them: `BIN --agent --connect ADDR --workers N`.
    Agent,
    /// One host agent per host, started over ssh by the pool's launcher
    /// (`HostLauncher::ssh`, as `pstream-coord run --ssh` does): the way a user
    /// without a cluster manager starts them.
    Ssh,
}

/// A pool whose workers join over TCP: `per_host` workers on each of `hosts`
/// (this binary, re-executed). Returns it with how long it took from the first
/// process's start until all workers had joined.
fn tcp_pool(
    token: &Path,
    hosts: &[usize],
    per_host: usize,
    start: Start,
    ssh: Option<&str>,
) -> Result<(ProcessPool, Workers, Duration), BoxError> {
    let listener = TcpListener::bind(format!("{SUBNET}.1:0"))?;
    let addr = listener.local_addr()?.to_string();
    let exe = std::env::current_exe()?;
    let total = hosts.len() * per_host;
    let started = Instant::now();
    let mut workers = Workers(Vec::with_capacity(total));
    if start == Start::Ssh {
        drop(listener);
        let ssh = ssh.ok_or("agents over ssh need the sshd's up")?;
        let targets = hosts.iter().map(|h| format!("root@{SUBNET}.{}", h + 1));
        let pool = ProcessPool::builder()
            .launcher(
                HostLauncher::ssh(targets)?
                    .ssh_command(ssh)?
                    .workers_per_host(per_host),
            )
            .min_workers(total)
            .wait_workers(Duration::from_secs(120))
            .build()?;
        // `build` returns at the first worker: the start ends when all are in.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let joined: u64 = pool.host_stats().values().map(|h| h.workers).sum();
            if joined >= total as u64 {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("only {joined} of {total} workers joined over ssh").into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let took = started.elapsed();
        return Ok((pool, workers, took));
    }
    let per = per_host.to_string();
    for &h in hosts {
        let (processes, args): (usize, Vec<&str>) = match start {
            Start::Connect => (per_host, vec!["--connect", &addr]),
            Start::Agent => (1, vec!["--agent", "--connect", &addr, "--workers", &per]),
            Start::Ssh => unreachable!("started by the launcher above"),
        };
        for _ in 0..processes {
            let child = Command::new("ip")
                .args(["netns", "exec", &format!("{PREFIX}{h}")])
                .arg(&exe)
                .args(&args)
                .arg("--token-file")
                .arg(token)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .env_remove("RUST_LOG")
                .spawn()?;
            workers.0.push(child);
        }
    }
    let pool = ProcessPool::builder()
        .workers(0)
        .listener(listener)
        .token_file(token)
        .min_workers(total)
        .wait_workers(Duration::from_secs(120))
        .build()?;
    let took = started.elapsed();
    Ok((pool, workers, took))
}

/// The ssh command that reaches this scenario's sshd's (started by `sshd-up.sh`).
fn ssh_command(net: &Net) -> String {
    format!(
        "ssh -p {SSHD_PORT} -i {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
         -o LogLevel=ERROR -o BatchMode=yes -o ConnectTimeout=5",
        net.state.path().join("sshd/id_ed25519").display()
    )
}

/// A per-line job on `hosts` over ssh: `pstream-coord run --ssh` (a host agent per
/// host, started over ssh) against GNU parallel `--sshlogin` (an ssh per line),
/// one job slot per host each. Their times, or why they did not run.
fn ssh_race(ssh: &str, hosts: usize, lines: u64) -> Result<(f64, f64), String> {
    let coord = crate::cli::find_coord()?;
    crate::cli::gnu_parallel()?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let input = dir.path().join("in.txt");
    let text: String = (1..=lines).map(|i| format!("{i}\n")).collect();
    std::fs::write(&input, text).map_err(|e| e.to_string())?;
    let want: String = (1..=lines).map(|i| format!("{}\n", 2 * i)).collect();
    let q = crate::cli::sh_quote;
    let targets: Vec<String> = (1..=hosts)
        .map(|i| format!("root@{SUBNET}.{}", i + 1))
        .collect();
    let out = dir.path().join("out.txt");
    let pstream = format!(
        "{} run --function double --format jsonl --ssh {} --ssh-command {} \
         --workers-per-host 1 --no-progress --input {} --output {}",
        q(&coord.display().to_string()),
        q(&targets.join(",")),
        q(ssh),
        q(&input.display().to_string()),
        q(&out.display().to_string())
    );
    let logins: Vec<String> = targets.iter().map(|t| format!("1/{t}")).collect();
    let parallel = format!(
        "parallel --will-cite -k --ssh {} -S {} 'echo $(( {{}} * 2 ))' < {} > {}",
        q(ssh),
        q(&logins.join(",")),
        q(&input.display().to_string()),
        q(&out.display().to_string())
    );
    let mut times = Vec::new();
    for (who, script) in [
        ("pstream-coord --ssh", &pstream),
        ("parallel --sshlogin", &parallel),
    ] {
        let t = crate::cli::run_timed(script).map_err(|e| format!("{who}: {e}"))?;
        let got = std::fs::read_to_string(&out).map_err(|e| e.to_string())?;
        if got != want {
            return Err(format!("{who} wrote a wrong output"));
        }
        times.push(t);
    }
    Ok((times[0], times[1]))
}

/// CPU time and context switches of every thread of every process running this
/// binary: the coordinator (this process), and its workers and host agents, also
/// those that ssh started (they are no children of ours, so `perf stat` on this
/// process does not see them). From /proc (`schedstat`, `status`).
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    secs: f64,
    voluntary: u64,
    involuntary: u64,
}

impl Cpu {
    fn now() -> Cpu {
        let Ok(me) = std::env::current_exe() else {
            return Cpu::default();
        };
        let mut cpu = Cpu::default();
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return cpu;
        };
        for p in procs.flatten() {
            if std::fs::read_link(p.path().join("exe")).ok().as_ref() != Some(&me) {
                continue;
            }
            let Ok(tasks) = std::fs::read_dir(p.path().join("task")) else {
                continue;
            };
            for t in tasks.flatten() {
                let field = |text: &str, at: usize| -> u64 {
                    text.split_whitespace()
                        .nth(at)
                        .and_then(|x| x.parse().ok())
                        .unwrap_or(0)
                };
                if let Ok(ss) = std::fs::read_to_string(t.path().join("schedstat")) {
                    cpu.secs += field(&ss, 0) as f64 / 1e9;
                }
                if let Ok(st) = std::fs::read_to_string(t.path().join("status")) {
                    for line in st.lines() {
                        if line.starts_with("voluntary_ctxt_switches") {
                            cpu.voluntary += field(line, 1);
                        } else if line.starts_with("nonvoluntary_ctxt_switches") {
                            cpu.involuntary += field(line, 1);
                        }
                    }
                }
            }
        }
        cpu
    }

    fn since(self, before: Cpu) -> Cpu {
        Cpu {
            secs: self.secs - before.secs,
            voluntary: self.voluntary.saturating_sub(before.voluntary),
            involuntary: self.involuntary.saturating_sub(before.involuntary),
        }
    }
}

impl std::fmt::Display for Cpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.2} CPU-s, {} + {} context switches (voluntary + not)",
            self.secs, self.voluntary, self.involuntary
        )
    }
}

fn sha(pool: &ProcessPool, n: u64) -> Result<u64, BoxError> {
    let mut sum = 0u64;
    for r in pool.map(sha256_bytes, (0..n).map(|i| Blob(blob(i))))? {
        sum = sum.wrapping_add(fold(r?));
    }
    Ok(sum)
}

fn check(who: &str, got: i64, n: u64) -> Result<(), BoxError> {
    let want = (n as i128 * (n as i128 - 1)) as i64;
    if got != want {
        return Err(format!("{who} computed a wrong sum: {got}, expected {want}").into());
    }
    Ok(())
}

pub fn tcp_scenario(s: &Settings, summary: &mut Summary) -> Result<(), BoxError> {
    println!("## TCP: workers on other hosts (network namespaces)");
    println!();
    if let Some(why) = missing() {
        println!("Skipped: {why}.");
        println!();
        for what in [
            "TCP vs Unix socket",
            "SHA-256 vs a 1 Gbit/s link",
            "fan-out start",
        ] {
            summary.add(what, format!("skipped: {why}"), "-", None);
        }
        return Ok(());
    }
    let w = s.workers.max(2);
    let n_double: u64 = if s.quick { 2_000_000 } else { 10_000_000 };
    let n_sha: u64 = if s.quick { 100_000 } else { 500_000 };
    let net = Net::up(FAN_HOSTS.max(w))?;
    let dir = tempfile::tempdir()?;
    let token = dir.path().join("bench.token");
    pstream::protocol::auth::create_token_file(&token)?;

    let fan_only = std::env::var_os("PSTREAM_BENCH_TCP_FAN_ONLY").is_some();
    let pre_runs = if fan_only { 0 } else { s.runs };
    let ratio_runs = if fan_only { 0 } else { s.ratio_runs() };
    // 1. double: TCP (one worker per host) against the Unix socket, same size.
    let unix = ProcessPool::builder().workers(w).build()?;
    let hosts: Vec<usize> = (1..=w).collect();
    let (tcp, tcp_workers, _) = tcp_pool(&token, &hosts, 1, Start::Connect, None)?;
    let (mut t_unix, mut t_tcp) = (Vec::new(), Vec::new());
    for _ in 0..ratio_runs {
        let (d, sum) = timed(|| pstream_double(&unix, n_double));
        check("pstream over the Unix socket", sum?, n_double)?;
        t_unix.push(d.as_secs_f64());
        let (d, sum) = timed(|| pstream_double(&tcp, n_double));
        check("pstream over TCP", sum?, n_double)?;
        t_tcp.push(d.as_secs_f64());
    }
    drop(unix);

    // 2. SHA-256 to one host whose link is limited: its workers share the link.
    drop(tcp);
    drop(tcp_workers);
    net.shape(1, LINK_TC)?;
    let shaped = (|| -> Result<Vec<f64>, BoxError> {
        let (pool, _workers, _) = tcp_pool(&token, &[1], w, Start::Connect, None)?;
        let want = {
            let mut sum = 0u64;
            use sha2::{Digest, Sha256};
            for i in 0..n_sha {
                sum = sum.wrapping_add(fold(Sha256::digest(blob(i)).into()));
            }
            sum
        };
        let mut times = Vec::new();
        for _ in 0..pre_runs {
            let (d, sum) = timed(|| sha(&pool, n_sha));
            if sum? != want {
                return Err("SHA-256 over TCP computed wrong digests".into());
            }
            times.push(d.as_secs_f64());
        }
        Ok(times)
    })();
    net.unshape(1);
    let t_sha = shaped?;

    // 3. Fan-out: 512 workers on 16 hosts against 2 workers on 2 hosts. The agents
    // are started over ssh (an sshd in each namespace), as `--ssh` does; without
    // sshd, by `ip netns exec`.
    let sshd = net
        .script("sshd-up.sh", &[])
        .map(|()| ssh_command(&net))
        .map_err(|e| format!("could not start the sshd's: {e}"));
    let (fan_start, fan_ssh) = match &sshd {
        Ok(ssh) => (Start::Ssh, Some(ssh.as_str())),
        Err(_) => (Start::Agent, None),
    };
    let per_sec = |n: u64, t: &[f64]| n as f64 / median(t);
    let fan_hosts: Vec<usize> = (1..=FAN_HOSTS).collect();
    let (mut starts, mut t_fan, mut t_two) = (Vec::new(), Vec::new(), Vec::new());
    let (mut connect_starts, mut agent_starts) = (Vec::new(), Vec::new());
    let (mut cpu_fan, mut cpu_two, mut cpu_idle) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..s.runs {
        // Started one by one (512 `ip netns exec`), for the start time only.
        let (pool, workers, took) = if fan_only {
            (None, None, Duration::ZERO)
        } else {
            let (p, w, t) = tcp_pool(&token, &fan_hosts, FAN_PER_HOST, Start::Connect, None)?;
            (Some(p), Some(w), t)
        };
        connect_starts.push(took.as_secs_f64());
        drop(pool);
        drop(workers);
        if fan_start == Start::Ssh && !fan_only {
            // Agents by `ip netns exec`, for the start time only: what ssh adds.
            let (pool, workers, took) =
                tcp_pool(&token, &fan_hosts, FAN_PER_HOST, Start::Agent, None)?;
            agent_starts.push(took.as_secs_f64());
            drop(pool);
            drop(workers);
        }
        // Started by a host agent per host: the way a cluster starts them.
        let (pool, workers, took) = tcp_pool(&token, &fan_hosts, FAN_PER_HOST, fan_start, fan_ssh)?;
        starts.push(took.as_secs_f64());
        let before = Cpu::now();
        let (d, sum) = timed(|| pstream_double(&pool, n_double));
        cpu_fan.push(Cpu::now().since(before));
        // The same workers idle for a second: heartbeats and parked threads.
        let before = Cpu::now();
        std::thread::sleep(Duration::from_secs(1));
        cpu_idle.push(Cpu::now().since(before));
        if fan_only {
            let items: Vec<u64> = pool.host_stats().values().map(|h| h.items).collect();
            println!(
                "- 512 workers: items per host {items:?}; {:?}",
                pool.stats()
            );
        }
        check("pstream with 512 workers", sum?, n_double)?;
        t_fan.push(d.as_secs_f64());
        drop(pool);
        drop(workers);
        let (pool, workers, _) = tcp_pool(&token, &[1, 2], 1, Start::Connect, None)?;
        let before = Cpu::now();
        let (d, sum) = timed(|| pstream_double(&pool, n_double));
        cpu_two.push(Cpu::now().since(before));
        check("pstream with 2 workers", sum?, n_double)?;
        t_two.push(d.as_secs_f64());
        drop(pool);
        drop(workers);
    }
    // Per round: wall time and the CPU of every process of this binary (load by
    // others changes the first more than the second).
    for (i, (f, t)) in t_fan.iter().zip(&t_two).enumerate() {
        println!(
            "- round {}: {FAN_HOSTS}x{FAN_PER_HOST} workers {} ({}), 2 workers {} ({}): {} of \
             the rate; then, the {} workers idle for 1 s: {}",
            i + 1,
            secs(*f),
            cpu_fan[i],
            secs(*t),
            cpu_two[i],
            ratio(t / f),
            FAN_HOSTS * FAN_PER_HOST,
            cpu_idle[i]
        );
    }
    if fan_only {
        println!(
            "- median: {}",
            ratio(per_sec(n_double, &t_fan) / per_sec(n_double, &t_two))
        );
        println!();
        return Ok(());
    }
    // Few lines: GNU parallel pays an ssh connection per line (most of a second here).
    let ssh_lines: u64 = if s.quick { 50 } else { 200 };
    let ssh = match &sshd {
        Ok(command) => ssh_race(command, w, ssh_lines),
        Err(why) => Err(why.clone()),
    };
    drop(net);

    // Round by round: the two alternate, so each ratio compares neighbours in time.
    let tcp_vs_unix = median_ratio(&t_unix, &t_tcp);
    let sha_rate = per_sec(n_sha, &t_sha);
    let link_use = sha_rate * BLOB as f64 * 8.0 / LINK_BITS;
    let fan_vs_two = median_ratio(&t_two, &t_fan);
    let start = median(&starts);
    let fan = FAN_HOSTS * FAN_PER_HOST;

    let mut table = Table::new(&["run", "items", "median time", "throughput", "ratio"]);
    table.row(vec![
        format!("`double`, {w} workers, Unix socket"),
        count(n_double),
        secs(median(&t_unix)),
        rate(per_sec(n_double, &t_unix)),
        "1.00".into(),
    ]);
    table.row(vec![
        format!("`double`, {w} workers on {w} hosts, TCP"),
        count(n_double),
        secs(median(&t_tcp)),
        rate(per_sec(n_double, &t_tcp)),
        ratio(tcp_vs_unix),
    ]);
    table.row(vec![
        format!("SHA-256 of 1 KiB, {w} workers on 1 host, TCP over a {LINK_TC} link"),
        count(n_sha),
        secs(median(&t_sha)),
        rate(sha_rate),
        format!("{link_use:.2} of the link's rate (items' bytes only)"),
    ]);
    table.row(vec![
        "`double`, 2 workers on 2 hosts, TCP".into(),
        count(n_double),
        secs(median(&t_two)),
        rate(per_sec(n_double, &t_two)),
        "1.00".into(),
    ]);
    table.row(vec![
        format!(
            "`double`, {fan} workers on {FAN_HOSTS} hosts (agents{}), TCP",
            if fan_start == Start::Ssh {
                " by ssh"
            } else {
                ""
            }
        ),
        count(n_double),
        secs(median(&t_fan)),
        rate(per_sec(n_double, &t_fan)),
        ratio(fan_vs_two),
    ]);
    table.print();
    println!(
        "- `double` over the Unix socket and over TCP in alternation, {} rounds each \
         (the ratio: the median of the rounds' ratios)",
        t_unix.len()
    );
    let how = match fan_start {
        Start::Ssh => {
            "one agent per host started over ssh by the pool's launcher, \
                       `HostLauncher::ssh(..).workers_per_host(32)` as `--ssh` does"
        }
        _ => "one agent per host started by `ip netns exec` (no sshd here)",
    };
    let by_hand = if agent_starts.is_empty() {
        String::new()
    } else {
        format!(
            "; {} with the agents started by `ip netns exec` instead of ssh",
            secs(median(&agent_starts))
        )
    };
    println!(
        "- {fan} workers on {FAN_HOSTS} hosts: all joined {} after the pool was asked for \
         them ({how}; median of {} starts){by_hand}; {} when each worker is started by \
         hand (`ip netns exec … --connect`, {fan} processes from this one)",
        secs(start),
        starts.len(),
        secs(median(&connect_starts))
    );
    match &ssh {
        Ok((pstream, parallel)) => println!(
            "- a per-line job (`double` over {ssh_lines} lines) on {w} hosts over ssh, one \
             slot per host: `pstream-coord run --ssh` {} (agents started over ssh, then \
             TCP), GNU parallel `--sshlogin` {} (an ssh per line): {} faster",
            secs(*pstream),
            secs(*parallel),
            ratio(parallel / pstream)
        ),
        Err(why) => println!("- the ssh race (GNU parallel `--sshlogin`) was skipped: {why}"),
    }
    println!();

    summary.add(
        "`double` over TCP vs the Unix socket (same workers)",
        format!("{tcp_vs_unix:.2}x"),
        ">= 0.8x",
        Some(tcp_vs_unix >= 0.8),
    );
    summary.add(
        "SHA-256 of 1 KiB items over a 1 Gbit/s link",
        format!("{link_use:.2} of the link"),
        ">= 0.9",
        Some(link_use >= 0.9),
    );
    summary.add(
        &format!(
            "fan-out: {fan} workers on {FAN_HOSTS} hosts start (agents{})",
            if fan_start == Start::Ssh {
                " by ssh"
            } else {
                ""
            }
        ),
        secs(start),
        "< 5 s",
        Some(start < 5.0),
    );
    summary.add(
        &format!("fan-out: `double` with {fan} workers vs 2"),
        format!("{fan_vs_two:.2}x"),
        ">= 0.7x",
        Some(fan_vs_two >= 0.7),
    );
    let bar = |name: String, n: u64, t: &[f64]| {
        let fastest = t.iter().copied().fold(f64::INFINITY, f64::min);
        let slowest = t.iter().copied().fold(0.0, f64::max);
        Bar {
            name,
            value: n as f64 / median(t) / 1e6,
            range: Some((n as f64 / slowest / 1e6, n as f64 / fastest / 1e6)),
        }
    };
    summary.chart(Chart {
        stem: "tcp".into(),
        title: format!("double over TCP and the Unix socket; {fan} workers on {FAN_HOSTS} hosts"),
        plot: Plot::Bars {
            unit: "million items per second (median; whisker: slowest to fastest round)".into(),
            bars: vec![
                bar(format!("Unix socket, {w} workers"), n_double, &t_unix),
                bar(format!("TCP, {w} workers on {w} hosts"), n_double, &t_tcp),
                bar("TCP, 2 workers on 2 hosts".into(), n_double, &t_two),
                bar(
                    format!("TCP, {fan} workers on {FAN_HOSTS} hosts"),
                    n_double,
                    &t_fan,
                ),
            ],
        },
    });
    summary.chart(Chart {
        stem: "tcp-link".into(),
        title: format!("SHA-256 of 1 KiB items over a {LINK_TC} link"),
        plot: Plot::Bars {
            unit: "thousand items per second (median; whisker: slowest to fastest round)".into(),
            bars: vec![
                Bar {
                    name: "the link's rate, in 1 KiB items".into(),
                    value: LINK_BITS / 8.0 / BLOB as f64 / 1e3,
                    range: None,
                },
                {
                    let mut b = bar(format!("TCP, {w} workers on 1 host"), n_sha, &t_sha);
                    b.value *= 1e3;
                    b.range = b.range.map(|(lo, hi)| (lo * 1e3, hi * 1e3));
                    b
                },
            ],
        },
    });
    Ok(())
}
