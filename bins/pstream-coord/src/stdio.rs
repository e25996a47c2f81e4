//! Standard streams that were closed when the launcher started.
//!
//! The Rust runtime puts `/dev/null` in place of a closed descriptor 0, 1 or 2
//! before `main` runs, so a closed stdin would read as an empty input and a closed
//! stdout would swallow the results: the job would "succeed" having done nothing.
//! Which ones were closed is noted earlier, by a function in `.init_array` (run by
//! the C runtime before it calls `main`), and the launcher refuses to use them.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::error::CliError;

/// Bit `fd` set: descriptor `fd` (0 or 1) was closed at start.
static CLOSED_AT_START: AtomicU8 = AtomicU8::new(0);

extern "C" fn note_closed_standard_streams() {
    for fd in 0..2 {
        // SAFETY: fcntl(F_GETFD) only reads the descriptor's flags, and fails with
        // EBADF if there is no such descriptor; no memory is involved.
        if unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFD) } == -1 {
            CLOSED_AT_START.fetch_or(1 << fd, Ordering::Relaxed);
        }
    }
}

/// Run before `main`, before the Rust runtime fills the closed descriptors in.
#[used]
#[link_section = ".init_array"]
static NOTE_CLOSED_STANDARD_STREAMS: extern "C" fn() = note_closed_standard_streams;

/// An error if descriptor `fd` (0: stdin, 1: stdout) was closed when the launcher
/// started.
pub fn refuse_closed(fd: u8) -> Result<(), CliError> {
    if CLOSED_AT_START.load(Ordering::Relaxed) & (1 << fd) == 0 {
        return Ok(());
    }
    let (stream, option) = if fd == 0 {
        ("stdin", "--input FILE")
    } else {
        ("stdout", "--output FILE")
    };
    Err(CliError::Run(
        format!("use {stream}"),
        format!("it was closed when pstream-coord started; give {option} or redirect it").into(),
    ))
}

/// A line on stderr, if it can be written: after SIGHUP the terminal may be gone
/// (EIO), or stderr a pipe no one reads any more (EPIPE), and that must not turn
/// the job into a panic (`eprintln!` panics when the write fails).
pub fn say(line: &str) {
    use std::io::Write;
    let mut text = Vec::with_capacity(line.len() + 1);
    text.extend_from_slice(line.as_bytes());
    text.push(b'\n');
    // One write: a line of its own among other threads' and processes' lines.
    let _ = std::io::stderr().lock().write_all(&text);
}
