//! Fingerprints of the input, so that `--resume` continues only the input the
//! interrupted run read.
//!
//! The reader hashes every byte it reads (SHA-256, in the reader thread, a chunk
//! at a time). The journal records the fingerprint of the prefix its lines count
//! covers — lines, bytes and SHA-256 of exactly those bytes — and checkpoints: the
//! fingerprints of the first 1, 2, 4, 8, ... lines. On resume the reader hashes the
//! prefix again as it skips it and compares at every checkpoint and at the end, so a
//! changed input is refused, naming the line that differs or the range of lines
//! (between two checkpoints) where the first difference lies; the input is read no
//! further than that.

use std::fmt::Write as _;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// A prefix of the input: its length in lines and bytes, and the SHA-256 of its
/// bytes (newlines included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    pub lines: u64,
    pub bytes: u64,
    pub sha256: [u8; 32],
}

impl Fingerprint {
    /// The empty prefix.
    pub fn empty() -> Fingerprint {
        Fingerprint {
            lines: 0,
            bytes: 0,
            sha256: Sha256::new().finalize().into(),
        }
    }

    /// `hasher` holds the prefix's bytes.
    pub fn of(lines: u64, bytes: u64, hasher: Sha256) -> Fingerprint {
        Fingerprint {
            lines,
            bytes,
            sha256: hasher.finalize().into(),
        }
    }

    pub fn to_json(self) -> Value {
        let mut hex = String::with_capacity(64);
        for b in self.sha256 {
            let _ = write!(hex, "{b:02x}");
        }
        json!({"lines": self.lines, "bytes": self.bytes, "sha256": hex})
    }

    pub fn from_json(value: &Value) -> Option<Fingerprint> {
        let hex = value["sha256"].as_str()?;
        if hex.len() != 64 {
            return None;
        }
        let mut sha256 = [0u8; 32];
        for (i, b) in sha256.iter_mut().enumerate() {
            *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Fingerprint {
            lines: value["lines"].as_u64()?,
            bytes: value["bytes"].as_u64()?,
            sha256,
        })
    }
}

/// What a resumed run expects of the input: the recorded fingerprint of the lines
/// the interrupted run handled, and its checkpoints.
#[derive(Debug, Clone)]
pub struct Expected {
    pub handled: Fingerprint,
    pub checkpoints: Vec<Fingerprint>,
}

/// The input is not the one the interrupted run read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InputChanged(pub String);

/// The running hash of the input in the reader thread: every byte read, its
/// checkpoints, and (on resume) their comparison with the recorded ones.
#[derive(Debug)]
pub struct Hashing {
    /// Holds every input byte before the reader's buffer.
    pub hasher: Sha256,
    /// The input offset of the reader's buffer.
    pub offset: u64,
    /// The line count of the next checkpoint.
    next_checkpoint: u64,
    /// The checkpoints so far, for the journal.
    published: std::sync::Arc<std::sync::Mutex<Vec<Fingerprint>>>,
    expected: Option<Expected>,
    /// The last checkpoint that matched the recorded one (lines).
    matched: u64,
}

impl Hashing {
    pub fn new(
        published: std::sync::Arc<std::sync::Mutex<Vec<Fingerprint>>>,
        expected: Option<Expected>,
    ) -> Hashing {
        Hashing {
            hasher: Sha256::new(),
            offset: 0,
            next_checkpoint: 1,
            published,
            expected,
            matched: 0,
        }
    }

    /// Whether a checkpoint falls at line count `lines`.
    #[inline]
    pub fn is_checkpoint(&self, lines: u64) -> bool {
        lines == self.next_checkpoint
    }

    /// Line `lines` ends the bytes `buffer_prefix` of the reader's buffer and is a
    /// checkpoint: record it, and on resume compare it.
    pub fn checkpoint(&mut self, lines: u64, buffer_prefix: &[u8]) -> Result<(), InputChanged> {
        let mut hasher = self.hasher.clone();
        hasher.update(buffer_prefix);
        let here = Fingerprint::of(lines, self.offset + buffer_prefix.len() as u64, hasher);
        self.next_checkpoint = self.next_checkpoint.saturating_mul(2);
        self.published.lock().unwrap().push(here);
        let Some(expected) = &self.expected else {
            return Ok(());
        };
        if lines > expected.handled.lines {
            return Ok(());
        }
        match expected.checkpoints.iter().find(|c| c.lines == lines) {
            Some(recorded) if *recorded != here => Err(self.differs_up_to(lines)),
            _ => {
                self.matched = lines;
                Ok(())
            }
        }
    }

    /// The skipped prefix ended, after `lines` lines, with the reader's buffer's
    /// first `buffer_prefix` bytes: compare it with the recorded one. Called only
    /// when there is something to compare.
    pub fn verify_prefix(&mut self, lines: u64, buffer_prefix: &[u8]) -> Result<(), InputChanged> {
        let Some(expected) = self.expected.take() else {
            return Ok(());
        };
        let mut hasher = self.hasher.clone();
        hasher.update(buffer_prefix);
        let here = Fingerprint::of(lines, self.offset + buffer_prefix.len() as u64, hasher);
        if lines < expected.handled.lines {
            return Err(InputChanged(format!(
                "it has {lines} lines, fewer than the {} the interrupted run handled",
                expected.handled.lines
            )));
        }
        if here != expected.handled {
            self.expected = Some(expected);
            return Err(self.differs_up_to(lines));
        }
        Ok(())
    }

    fn differs_up_to(&self, lines: u64) -> InputChanged {
        let first = self.matched + 1;
        InputChanged(if first == lines {
            format!("line {lines} differs from the one the interrupted run read")
        } else {
            format!(
                "the first line that differs from what the interrupted run read is \
                 between lines {first} and {lines}"
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_round_trip_through_json() {
        let mut hasher = Sha256::new();
        hasher.update(b"1\n2\n");
        let f = Fingerprint::of(2, 4, hasher);
        assert_eq!(Fingerprint::from_json(&f.to_json()), Some(f));
        // sha256sum of "1\n2\n"
        assert_eq!(
            f.to_json()["sha256"],
            "a6e2b7a040683432de03a18fd8a1939a2fdf82585b364bfc874bdd4095c4cae1"
        );
        assert_eq!(Fingerprint::from_json(&json!({"lines": 1})), None);
        assert_eq!(Fingerprint::empty().bytes, 0);
    }
}
