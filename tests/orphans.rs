//! Workers never outlive their coordinator: SIGKILL the coordinator while its
//! workers are stuck in items that never end, and every worker is gone a second
//! later. Alone in its test binary, because it makes this process a child subreaper
//! to reap the orphaned workers itself.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use pstream::Codec;
use pstream_examples::Fault;
use support::*;

const CHILD_ENV: &str = "PSTREAM_TEST_ORPHANS_CHILD";

/// Run as a child process by the test below: a coordinator in the middle of a job.
#[test]
#[ignore = "run by coordinator_sigkilled_mid_job_leaves_no_worker"]
fn coordinator_child() {
    let _watchdog = watchdog("coordinator_child", Duration::from_secs(240));
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    // One item a batch, so item 0 comes back at once; every later item sleeps
    // forever, so a worker holding one can only end by its parent-death signal.
    let pool = builder().workers(3).max_batch(1).build().unwrap();
    let items = (0u64..).map(|i| {
        let fault = if i == 0 { Fault::None } else { Fault::Hang };
        format!(r#"{{"value":{i},"fault":"{}"}}"#, fault.name())
    });
    let mut results = pool.map_raw("misbehave", Codec::Json, true, items).unwrap();
    let (index, first) = results.next_raw().unwrap();
    assert_eq!((index, first.unwrap()), (0, &b"0"[..]));
    let pids: Vec<String> = pool.worker_pids().iter().map(u32::to_string).collect();
    println!("pids {}", pids.join(" "));
    // Lead the engine until killed.
    while let Some((_, r)) = results.next_raw() {
        r.unwrap();
    }
}

#[test]
fn coordinator_sigkilled_mid_job_leaves_no_worker() {
    let _watchdog = watchdog(
        "coordinator_sigkilled_mid_job_leaves_no_worker",
        Duration::from_secs(240),
    );
    // Orphaned workers are reparented to us, so we can see them die and reap them.
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "coordinator_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Should the child hang before printing its workers, kill it rather than hang.
    let (printed, guard) = std::sync::mpsc::channel::<()>();
    let child_pid = Pid::from_raw(child.id() as i32);
    std::thread::spawn(move || {
        if guard.recv_timeout(Duration::from_secs(120)).is_err() {
            let _ = nix::sys::signal::kill(child_pid, Signal::SIGKILL);
        }
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let pids: Vec<u32> = loop {
        let line = lines
            .next()
            .expect("the child coordinator ended before printing its workers")
            .unwrap();
        // libtest may print "test coordinator_child ... " on the same line.
        if let Some((_, rest)) = line.split_once("pids ") {
            break rest.split(' ').map(|p| p.parse().unwrap()).collect();
        }
    };
    let _ = printed.send(());
    let _cleanup = KillIfFailed(pids.clone());
    assert_eq!(pids.len(), 3);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let killed_at = Instant::now();
    // Each worker must die on its own; reap each as it does. One stuck in an item
    // can only be ended by PR_SET_PDEATHSIG (SIGKILL). One that was between frames
    // may instead read the closed socket first and exit by itself: the kernel
    // closes the dead coordinator's sockets before it signals its children.
    let mut exited_by_themselves = 0;
    for &pid in &pids {
        loop {
            match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {
                    assert!(
                        killed_at.elapsed() < Duration::from_secs(1),
                        "worker {pid} still alive a second after its coordinator was killed"
                    );
                    std::thread::yield_now();
                }
                Ok(WaitStatus::Signaled(_, signal, _)) => {
                    assert_eq!(signal, Signal::SIGKILL, "worker {pid}");
                    break;
                }
                Ok(WaitStatus::Exited(..)) => {
                    exited_by_themselves += 1;
                    break;
                }
                Ok(other) => panic!("worker {pid} ended unexpectedly: {other:?}"),
                Err(e) => panic!("worker {pid} was not reparented to the test: {e}"),
            }
        }
    }
    assert!(
        exited_by_themselves < pids.len(),
        "no worker was stuck in an item, so the parent-death signal went untested"
    );
    assert_gone(&pids);
}

/// Should the test fail, kill and reap the workers it found alive: a failing test
/// must not leave sleeping workers behind (they would also hold cargo's pipe open).
struct KillIfFailed(Vec<u32>);

impl Drop for KillIfFailed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for &pid in &self.0 {
                let pid = Pid::from_raw(pid as i32);
                if nix::sys::signal::kill(pid, Signal::SIGKILL).is_ok() {
                    let _ = waitpid(pid, None);
                }
            }
        }
    }
}
