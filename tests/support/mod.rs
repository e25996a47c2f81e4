//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use pstream::{PoolBuilder, ProcessPool};

mod common;
// Not every test binary scales its sizes.
#[allow(unused_imports)]
pub use common::scale;

/// The example plugin binary.
pub fn plugin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pstream-examples"))
}

/// A builder for a pool of the example plugin, with short timeouts for tests.
pub fn builder() -> PoolBuilder {
    ProcessPool::builder()
        .program(plugin())
        .handshake_timeout(Duration::from_secs(20))
        .shutdown_grace(Duration::from_secs(5))
}

/// Wait for `condition`, failing the test with `what` after a generous deadline.
pub fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::yield_now();
    }
}

pub fn pool(workers: usize) -> ProcessPool {
    builder()
        .workers(workers)
        .build()
        .expect("start a pool of the example plugin")
}

/// Whether a process exists (including as a zombie), and its state letter.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the command name, which is in parentheses.
    let after = stat.rsplit_once(')')?.1;
    after.trim_start().chars().next()
}

/// Assert that none of the pids is alive or a zombie.
pub fn assert_gone(pids: &[u32]) {
    for &pid in pids {
        if let Some(state) = process_state(pid) {
            panic!("worker {pid} still exists in state {state}");
        }
    }
}

/// Peak resident set size of this process so far, in bytes.
pub fn peak_rss() -> u64 {
    status_kib("VmHWM:") * 1024
}

/// Current resident set size of this process, in bytes.
pub fn current_rss() -> u64 {
    status_kib("VmRSS:") * 1024
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// Reset this process's peak RSS (VmHWM) to its current RSS, so `peak_rss` measures
/// from here on. False where the kernel does not allow it (before Linux 4.0).
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// A watchdog over a test's result loop: if it is not dropped within `limit`, it
/// prints `what` and ends the test process (exit 101), so a bug that would make a
/// loop wait forever fails the test instead of hanging the suite.
#[must_use = "the watchdog is disarmed when dropped"]
pub struct Watchdog {
    done: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub fn watchdog(what: &str, limit: Duration) -> Watchdog {
    let (done, rx) = std::sync::mpsc::channel::<()>();
    let what = what.to_string();
    let thread = std::thread::Builder::new()
        .name("test-watchdog".into())
        .spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                eprintln!("watchdog: {what} did not finish within {limit:?}: the test hangs");
                std::process::exit(101);
            }
        })
        .expect("start the watchdog thread");
    Watchdog {
        done: Some(done),
        thread: Some(thread),
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.done.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
