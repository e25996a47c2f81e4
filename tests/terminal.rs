//! The launcher on a real (pseudo-)terminal that is its controlling terminal, as in
//! an interactive shell: terminal job control must not stop its workers.

#[allow(dead_code)] // Not every helper is used here.
#[path = "support/cli.rs"]
mod support;

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Stdio;

use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
use support::*;

/// `stty tostop` on the launcher's terminal, and a function that writes to stderr:
/// a worker (a background process group of that terminal) that writes there would
/// be stopped by SIGTTOU, and every item that talks would freeze its worker until
/// the time limit. Workers ignore SIGTTOU and SIGTTIN: the job runs as elsewhere.
#[test]
fn workers_are_not_stopped_by_terminal_job_control() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.jsonl");
    let output = dir.path().join("output.jsonl");
    let n = 400;
    let talkers = [17, 150, 151, 390];
    let lines: String = (0..n)
        .map(|i| {
            let fault = if talkers.contains(&i) { "talk" } else { "none" };
            format!("{{\"value\":{i},\"fault\":\"{fault}\"}}\n")
        })
        .collect();
    std::fs::write(&input, lines).unwrap();

    let pty = nix::pty::openpty(None, None).expect("open a pseudo-terminal");
    let mut modes = tcgetattr(pty.slave.as_fd()).unwrap();
    modes.local_flags |= LocalFlags::TOSTOP;
    tcsetattr(pty.slave.as_fd(), SetArg::TCSANOW, &modes).unwrap();
    let tty = CString::new(
        std::fs::read_link(format!("/proc/self/fd/{}", {
            use std::os::fd::AsRawFd;
            pty.slave.as_raw_fd()
        }))
        .unwrap()
        .into_os_string()
        .into_encoded_bytes(),
    )
    .unwrap();
    let master: OwnedFd = pty.master;

    let mut cmd = coord(&[
        "run",
        "--function",
        "misbehave",
        "--format",
        "jsonl",
        "--workers",
        "2",
        "--timeout",
        "3s",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]);
    let what = describe(&cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(pty.slave));
    // SAFETY: between fork and exec the closure makes only async-signal-safe system
    // calls (setsid, open, close) on a path made before the fork; it allocates
    // nothing. A session leader that opens a terminal without O_NOCTTY makes it its
    // controlling terminal, with its own process group in the foreground.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid()?;
            let fd = nix::fcntl::open(
                tty.as_c_str(),
                nix::fcntl::OFlag::O_RDWR,
                nix::sys::stat::Mode::empty(),
            )?;
            drop(fd);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(cmd); // Our copy of the slave side: EOF comes when the child's closes.
    let reader = std::thread::spawn(move || {
        let mut file = std::fs::File::from(master);
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        // EIO once no process holds the slave side open.
        while let Ok(n) = file.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        seen
    });
    let status = wait_exit(&mut child, "pstream-coord on its controlling terminal");
    let seen = String::from_utf8_lossy(&reader.join().unwrap()).into_owned();
    let explain = report(&what, status, b"", seen.as_bytes());
    assert!(status.success(), "{explain}");
    assert!(seen.contains("0 timeouts"), "{explain}");
    assert_eq!(
        seen.matches("misbehave: talking on stderr").count(),
        talkers.len(),
        "{explain}"
    );
    let expected: String = (0..n).map(|i| format!("{i}\n")).collect();
    assert_eq!(String::from_utf8(read(&output)).unwrap(), expected);
}
