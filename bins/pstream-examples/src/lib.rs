//! pstream's example functions. The `pstream-examples` binary serves them as a
//! plugin, and `pstream-coord` serves them built in.
//!
//! * [`double`]: an integer → twice it (an error if that overflows `i64`).
//! * [`upper`]: a string → its uppercase.
//! * [`sha256sum`]: a file path → the line coreutils `sha256sum` prints for it.
//! * [`slow_double`]: like `double`, after about 20 µs of CPU.
//! * [`misbehave`]: returns its `value`, or commits the `fault` it is asked for:
//!   the crash-test fixture.
//! * [`lookup`]: whether a word is in a list loaded from a file once per worker
//!   (per-worker state, [`Words`]).
//! * [`spawn_sleeper`]: starts a `sleep 600` it does not wait for, then commits a
//!   fault: the fixture for "nothing a function starts outlives its worker".
#![deny(missing_docs)]

use std::io::Read;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

mod words;
pub use words::{lookup, Lookup, Words, LOAD_LOG_ENV, WORDS_ENV};

pstream::function! {
    /// Twice the input; an error if that does not fit in an `i64`.
    pub fn double(x: i64) -> Result<i64, String> {
        x.checked_mul(2).ok_or_else(|| format!("{x} * 2 overflows a 64-bit integer"))
    }
}

pstream::function! {
    /// The input in uppercase (Unicode-aware; ASCII letters as `tr a-z A-Z`).
    pub fn upper(s: String) -> String {
        s.to_uppercase()
    }
}

pstream::function! {
    /// Exactly the line coreutils `sha256sum` prints for the file at `path`
    /// (`<hex>  <path>`, with its escaping of backslashes and newlines in names).
    pub fn sha256sum(path: String) -> Result<String, String> {
        sha256_line(&path)
    }
}

pstream::function! {
    /// Like `double`, after spending about 20 µs of CPU.
    pub fn slow_double(x: i64) -> Result<i64, String> {
        spin(Duration::from_micros(20));
        x.checked_mul(2).ok_or_else(|| format!("{x} * 2 overflows a 64-bit integer"))
    }
}

pstream::function! {
    /// SHA-256 of a blob of bytes (the benchmark's byte-heavy function).
    pub fn sha256_bytes(data: Blob) -> [u8; 32] {
        Sha256::digest(&data.0).into()
    }
}

pstream::function! {
    /// Return `value`, or commit `fault`. JSON only (the value may be anything).
    pub fn misbehave(input: Misbehave) -> serde_json::Value {
        input.fault.commit();
        input.value
    }
}

pstream::function! {
    /// Start `sleep 600` with `PSTREAM_SLEEPER=<marker>` in its environment (so a test
    /// can find it), leave it running, then commit `fault`; the sleep's pid.
    pub fn spawn_sleeper(input: Sleeper) -> Result<u32, String> {
        let sleep = std::process::Command::new("sleep")
            .arg("600")
            .env("PSTREAM_SLEEPER", &input.marker)
            // Nothing of the worker's: the sleep must not hold the coordinator's
            // stderr (or anything else) open.
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("start sleep: {e}"))?;
        let pid = sleep.id();
        // Dropped without waiting: it outlives this call.
        drop(sleep);
        input.fault.commit();
        Ok(pid)
    }
}

/// The input of [`spawn_sleeper`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sleeper {
    /// Put in the sleep's environment as `PSTREAM_SLEEPER`.
    pub marker: String,
    /// What to do after starting it.
    #[serde(default)]
    pub fault: Fault,
}

/// Bytes that travel as bytes (not as a sequence of numbers, which costs twice as
/// much in bincode and six times as much in JSON).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Blob(pub Vec<u8>);

impl Serialize for Blob {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Blob;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Blob, E> {
                Ok(Blob(v.to_vec()))
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Blob, E> {
                Ok(Blob(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Blob, E> {
                Ok(Blob(v.as_bytes().to_vec()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Blob, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(b) = seq.next_element()? {
                    v.push(b);
                }
                Ok(Blob(v))
            }
        }
        // `deserialize_bytes`: a decoder that holds the bytes lends them (one copy
        // into the Vec); bincode's `deserialize_byte_buf` zeroes a fresh Vec first.
        d.deserialize_bytes(Visitor)
    }
}

/// The input of [`misbehave`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Misbehave {
    /// What to return when all goes well.
    pub value: serde_json::Value,
    /// What to do instead.
    #[serde(default)]
    pub fault: Fault,
}

/// The faults [`misbehave`] commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fault {
    /// Behave.
    #[default]
    None,
    /// `panic!`.
    Panic,
    /// `abort()`: SIGABRT.
    Abort,
    /// A segmentation fault: SIGSEGV.
    Segv,
    /// `exit(3)`.
    Exit,
    /// SIGKILL to itself.
    Kill,
    /// Sleep forever.
    Hang,
    /// Allocate (and touch) memory until something gives.
    Oom,
    /// Write a line to stderr, then behave: no failure at all, unless writing to a
    /// terminal stops the process (job control).
    Talk,
    /// SIGSTOP to itself: the whole process (its progress reports included) freezes.
    Freeze,
    /// Shut down every socket of the process (its connection to the coordinator
    /// among them), then sleep forever: a native library gone wild.
    Close,
}

impl Fault {
    /// Every fault kind, in a fixed order.
    pub const ALL: [Fault; 11] = [
        Fault::None,
        Fault::Panic,
        Fault::Abort,
        Fault::Segv,
        Fault::Exit,
        Fault::Kill,
        Fault::Hang,
        Fault::Oom,
        Fault::Talk,
        Fault::Freeze,
        Fault::Close,
    ];

    /// The name used on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Fault::None => "none",
            Fault::Panic => "panic",
            Fault::Abort => "abort",
            Fault::Segv => "segv",
            Fault::Exit => "exit",
            Fault::Kill => "kill",
            Fault::Hang => "hang",
            Fault::Oom => "oom",
            Fault::Talk => "talk",
            Fault::Freeze => "freeze",
            Fault::Close => "close",
        }
    }

    fn commit(self) {
        use nix::sys::signal::{raise, signal, SigHandler, Signal};
        match self {
            Fault::None => return,
            Fault::Talk => {
                eprintln!("misbehave: talking on stderr");
                return;
            }
            Fault::Panic => panic!("misbehave: asked to panic"),
            Fault::Abort => std::process::abort(),
            Fault::Segv => {
                // SAFETY: restoring the default action of SIGSEGV replaces Rust's
                // stack-overflow handler; this process is about to die of the signal
                // anyway, which is the point.
                unsafe {
                    let _ = signal(Signal::SIGSEGV, SigHandler::SigDfl);
                }
                let _ = raise(Signal::SIGSEGV);
            }
            Fault::Exit => std::process::exit(3),
            Fault::Kill => {
                let _ = raise(Signal::SIGKILL);
            }
            Fault::Hang => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
            Fault::Freeze => loop {
                // Stopped until killed; a SIGCONT from outside only stops it again.
                let _ = raise(Signal::SIGSTOP);
            },
            Fault::Close => {
                if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
                    for fd in fds.flatten() {
                        let Ok(fd) = fd.file_name().to_string_lossy().parse::<i32>() else {
                            continue;
                        };
                        // On an fd that is not a socket this fails with ENOTSOCK.
                        let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
                    }
                }
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            Fault::Oom => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 64 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
        }
        // raise() returns only if the signal could not be delivered.
        std::process::abort();
    }
}

/// Burn CPU for `d` (not sleep: the point is to cost CPU).
fn spin(d: Duration) {
    let start = Instant::now();
    let mut x = 0u64;
    while start.elapsed() < d {
        for _ in 0..64 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

/// The line `sha256sum` prints for `path`, without the newline.
pub fn sha256_line(path: &str) -> Result<String, String> {
    let mut file = std::fs::File::open(path).map_err(|e| format!("{path}: {}", describe(&e)))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("{path}: {}", describe(&e))),
        }
    }
    let digest = hasher.finalize();
    let mut line = String::with_capacity(66 + path.len());
    // coreutils marks a name it had to escape with a leading backslash.
    let escape = path.contains(['\\', '\n', '\r']);
    if escape {
        line.push('\\');
    }
    for b in digest {
        line.push_str(&format!("{b:02x}"));
    }
    line.push_str("  ");
    if escape {
        for c in path.chars() {
            match c {
                '\\' => line.push_str("\\\\"),
                '\n' => line.push_str("\\n"),
                '\r' => line.push_str("\\r"),
                c => line.push(c),
            }
        }
    } else {
        line.push_str(path);
    }
    Ok(line)
}

fn describe(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "No such file or directory".into(),
        std::io::ErrorKind::PermissionDenied => "Permission denied".into(),
        std::io::ErrorKind::IsADirectory => "Is a directory".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_a_known_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").unwrap();
        let p = path.to_str().unwrap();
        assert_eq!(
            sha256_line(p).unwrap(),
            format!("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  {p}")
        );
        let missing = dir.path().join("missing");
        let err = sha256_line(missing.to_str().unwrap()).unwrap_err();
        assert!(err.ends_with("No such file or directory"), "{err}");
    }
}
