//! Many machines on one: network namespaces stand in for hosts (the scripts in
//! tests/cluster/, with names of their own so that they never touch another
//! cluster on this machine), the coordinator listens on the bridge, and workers
//! started inside the namespaces join it over TCP.
//!
//! Needs root and `ip` (iproute2). Without them the tests fail, saying so; set
//! `PSTREAM_SKIP_CLUSTER=1` to skip them instead (each says that it was skipped).
//! The tests take a lock, so that only one cluster is up at a time, and tear the
//! cluster down when they end, passed or failed.

#[path = "support/cluster.rs"]
mod harness;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use harness::{
    assert_every_host_worked, assert_workers_on_every_host, job, stats, wait_for_output, Cluster,
    Coordinator, Guarded, Names, Services,
};
use harness::{bin, PATIENCE};

/// This file's clusters: the simulated hosts' names are `pscl-h` and a number;
/// the bridge, subnet and state directory are this file's own. The lock is shared
/// with tests/launchers.rs, so that one of their clusters is up at a time.
static NAMES: Names = Names {
    tests: "the cluster tests",
    root_for: "network namespaces",
    prefix: "pscl-h",
    bridge: "psclbr",
    subnet: "10.79.0",
    lock: "pstream-cluster-tests.lock",
    state: "pstream-cluster",
    sshd_port: None,
    slurm_ports: None,
};

/// `hosts` simulated hosts, or `None` if the tests are skipped.
fn up(hosts: usize) -> Option<Cluster> {
    Cluster::up(&NAMES, hosts, Services::None)
}

/// A worker (pstream-coord serving its example functions) on host `i`.
fn worker(cluster: &Cluster, i: usize, addr: &str, token: &Path) -> Guarded {
    let child = cluster
        .exec(i, bin())
        .args(["--connect", addr, "--token-file"])
        .arg(token)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .env_remove("RUST_LOG")
        .spawn()
        .expect("start a worker in a namespace");
    Guarded::new(child)
}

#[test]
fn a_job_across_three_hosts_is_exact_and_every_host_works() {
    let Some(cluster) = up(3) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let expected = job(dir.path(), 60_000);
    // Every worker in before the job starts, so that each host must work.
    let coordinator =
        Coordinator::start(&cluster, dir.path(), "slow_double", &["--min-workers", "6"]);
    let token = dir.path().join("job.token");
    let workers: Vec<Guarded> = (1..=3)
        .flat_map(|i| [i, i])
        .map(|i| worker(&cluster, i, &coordinator.addr, &token))
        .collect();
    let (code, stderr) = coordinator.finish();
    assert_eq!(code, Some(0), "{stderr}");
    let out = std::fs::read_to_string(dir.path().join("out.txt")).unwrap();
    assert!(
        out == expected,
        "the output differs from the one-machine result"
    );
    let stats = stats(dir.path());
    assert_every_host_worked(&cluster, &stats, 1..=3);
    assert_eq!(stats["items_failed"], 0, "{stats}");
    // Told to shut down, the workers exit 0.
    for w in workers {
        assert_eq!(w.wait(PATIENCE), Some(0));
    }
    for i in 1..=3 {
        cluster.wait_idle(i, PATIENCE);
    }
}

#[test]
fn a_host_cut_off_mid_job_loses_nothing_and_its_workers_exit() {
    let Some(cluster) = up(3) else {
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
        .map(|i| worker(&cluster, i, &coordinator.addr, &token))
        .collect();
    wait_for_output(&dir.path().join("out.txt"), PATIENCE);
    cluster.cut(2);
    let (code, stderr) = coordinator.finish();
    // Healed after the job: whatever host 2 sends now reaches nobody.
    cluster.heal(2);
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
    cluster.wait_idle(2, Duration::from_secs(60));
    drop(workers);
}

#[test]
fn a_coordinator_killed_leaves_no_worker_on_any_host() {
    let Some(cluster) = up(3) else {
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
        .map(|i| worker(&cluster, i, &coordinator.addr, &token))
        .collect();
    wait_for_output(&dir.path().join("out.txt"), PATIENCE);
    coordinator
        .run
        .child
        .signal(nix::sys::signal::Signal::SIGKILL);
    for i in 1..=3 {
        cluster.wait_idle(i, Duration::from_secs(30));
    }
    drop(workers);
    drop(coordinator);
}

#[test]
fn a_host_that_joins_mid_job_takes_work() {
    let Some(cluster) = up(4) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let expected = job(dir.path(), 150_000);
    let coordinator = Coordinator::start(&cluster, dir.path(), "slow_double", &[]);
    let token = dir.path().join("job.token");
    let mut workers: Vec<Guarded> = (1..=3)
        .map(|i| worker(&cluster, i, &coordinator.addr, &token))
        .collect();
    wait_for_output(&dir.path().join("out.txt"), PATIENCE);
    // A fourth host, started late.
    workers.push(worker(&cluster, 4, &coordinator.addr, &token));
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
    let Some(cluster) = up(HOSTS) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let expected = job(dir.path(), 1_000_000);
    let all = (HOSTS * PER_HOST).to_string();
    let coordinator = Coordinator::start(
        &cluster,
        dir.path(),
        "double",
        // Batches of at most 1,000 items (half the window): about 1,000 of them;
        // a worker that joined gets one before a warm worker gets another, so
        // each host gets some.
        &["--workers", "0", "--min-workers", &all, "--window", "2000"],
    );
    let token = dir.path().join("job.token");
    let workers: Vec<Guarded> = (1..=HOSTS)
        .flat_map(|i| std::iter::repeat_n(i, PER_HOST))
        .map(|i| worker(&cluster, i, &coordinator.addr, &token))
        .collect();
    let (code, stderr) = coordinator.finish();
    assert_eq!(code, Some(0), "{stderr}");
    let out = std::fs::read_to_string(dir.path().join("out.txt")).unwrap();
    assert!(out == expected, "the output is not exact");
    let stats = stats(dir.path());
    assert_eq!(stats["items_failed"], 0, "{stats}");
    assert_workers_on_every_host(&cluster, &stats, 1..=HOSTS, PER_HOST);
    assert_every_host_worked(&cluster, &stats, 1..=HOSTS);
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
        cluster.wait_idle(i, PATIENCE);
    }
}
