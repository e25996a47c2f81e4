//! Host agents on many machines on one: network namespaces stand in for hosts
//! (tests/cluster/ scripts, with this file's own names), the coordinator listens
//! on the bridge, and one `pstream-coord --agent` per host starts that host's
//! workers and reports their ends.
//!
//! Needs root and `ip` (iproute2); `PSTREAM_SKIP_CLUSTER=1` skips it, saying so.
//! The cluster is torn down when each test ends, passed or failed.

#[path = "support/cluster.rs"]
mod harness;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use harness::{assert_every_host_worked, bin, job, poll, stats, wait_for_output, PATIENCE};
use harness::{Cluster, Coordinator, Guarded, Names, Services};

/// This file's clusters: the simulated hosts' names are `psag-h` and a number;
/// the bridge, subnet, state directory and lock are the host agents' tests' own
/// (tests/cluster.rs has others).
static NAMES: Names = Names {
    tests: "the cluster tests",
    root_for: "network namespaces",
    prefix: "psag-h",
    bridge: "psagbr",
    subnet: "10.80.0",
    lock: "pstream-agent-cluster-tests.lock",
    state: "pstream-agent-cluster",
    sshd_port: None,
    slurm_ports: None,
};

/// `hosts` simulated hosts, or `None` if the tests are skipped.
fn up(hosts: usize) -> Option<Cluster> {
    Cluster::up(&NAMES, hosts, Services::None)
}

/// A host agent (pstream-coord --agent) with `workers` workers on host `i`, the
/// token on its standard input.
fn agent(cluster: &Cluster, i: usize, addr: &str, token: &Path, workers: u32) -> Guarded {
    let mut child = cluster
        .exec(i, bin())
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
    Guarded::new(child)
}

/// A coordinator on the bridge for the job in `dir`, its errors in `err.txt`.
fn coordinator(cluster: &Cluster, dir: &Path, function: &str, extra: &[&str]) -> Coordinator {
    let errors = dir.join("err.txt");
    let mut args = vec!["--errors", errors.to_str().unwrap()];
    args.extend(extra);
    Coordinator::start(cluster, dir, function, &args)
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
    let Some(cluster) = up(3) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let expected = job(dir.path(), 60_000);
    // Every host's workers in before the job starts, so that each must work.
    let coordinator = coordinator(&cluster, dir.path(), "slow_double", &["--min-workers", "6"]);
    let token = dir.path().join("job.token");
    let agents: Vec<Guarded> = (1..=3)
        .map(|i| agent(&cluster, i, &coordinator.addr, &token, 2))
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
    // Told to shut down, the agents exit 0, and leave nothing behind.
    for a in agents {
        assert_eq!(a.wait(PATIENCE), Some(0));
    }
    for i in 1..=3 {
        cluster.wait_idle(i, PATIENCE);
    }
}

#[test]
fn a_segfault_on_another_host_is_reported_as_on_this_one() {
    let Some(cluster) = up(2) else {
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
    let coordinator = coordinator(&cluster, dir.path(), "misbehave", &extra);
    let token = dir.path().join("job.token");
    let agent = agent(&cluster, 2, &coordinator.addr, &token, 2);
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
    cluster.wait_idle(2, PATIENCE);
}

#[test]
fn a_killed_coordinator_leaves_no_agent_and_no_worker_on_any_host() {
    let Some(cluster) = up(3) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    job(dir.path(), 2_000_000);
    let coordinator = coordinator(&cluster, dir.path(), "slow_double", &[]);
    let token = dir.path().join("job.token");
    let agents: Vec<Guarded> = (1..=3)
        .map(|i| agent(&cluster, i, &coordinator.addr, &token, 2))
        .collect();
    wait_for_output(&dir.path().join("out.txt"), PATIENCE);
    for i in 1..=3 {
        // The agent and its two workers.
        poll(PATIENCE, Duration::from_millis(20), || {
            let pids = cluster.pids(i);
            match pids.len() {
                3.. => Ok(()),
                _ => Err(format!("host {i}: {pids:?}")),
            }
        });
    }
    coordinator
        .run
        .child
        .signal(nix::sys::signal::Signal::SIGKILL);
    // The kernel closes the dead coordinator's connections; at the latest, the
    // agents give it up after the heartbeat timeout (10 s). The limit allows as
    // much again for a loaded machine: a hang guard, not a measure.
    for i in 1..=3 {
        cluster.wait_idle(i, Duration::from_secs(20));
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
    let Some(cluster) = up(3) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let expected = job(dir.path(), 150_000);
    let coordinator = coordinator(
        &cluster,
        dir.path(),
        "slow_double",
        &["--heartbeat", "250ms", "--heartbeat-timeout", "2s"],
    );
    let token = dir.path().join("job.token");
    let agents: Vec<Guarded> = (1..=3)
        .map(|i| agent(&cluster, i, &coordinator.addr, &token, 2))
        .collect();
    wait_for_output(&dir.path().join("out.txt"), PATIENCE);
    cluster.cut(2);
    let (code, stderr) = coordinator.finish();
    cluster.heal(2);
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
    cluster.wait_idle(2, Duration::from_secs(60));
    drop(agents);
}
