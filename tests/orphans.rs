//! Workers never outlive their coordinator: SIGKILL the coordinator mid-job and
//! every worker is gone a second later. Alone in its test binary, because it makes
//! this process a child subreaper to reap the orphaned workers itself.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use pstream_examples::slow_double;
use support::*;

const CHILD_ENV: &str = "PSTREAM_TEST_ORPHANS_CHILD";

/// Run as a child process by the test below: a coordinator in the middle of a job.
#[test]
#[ignore = "run by coordinator_sigkilled_mid_job_leaves_no_worker"]
fn coordinator_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let pool = pool(3);
    let mut results = pool.map(slow_double, 0i64..).unwrap();
    results.next().unwrap().unwrap();
    let pids: Vec<String> = pool.worker_pids().iter().map(u32::to_string).collect();
    println!("pids {}", pids.join(" "));
    for r in results {
        r.unwrap();
    }
}

#[test]
fn coordinator_sigkilled_mid_job_leaves_no_worker() {
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
    assert_eq!(pids.len(), 3);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let killed_at = Instant::now();
    // Each worker must die on its own (PR_SET_PDEATHSIG); reap each as it does.
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
                Ok(other) => panic!("worker {pid} ended unexpectedly: {other:?}"),
                Err(e) => panic!("worker {pid} was not reparented to the test: {e}"),
            }
        }
    }
    assert_gone(&pids);
}
