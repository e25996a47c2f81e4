//! The resume journal: a small file next to the output that says how far the output
//! (and errors) file is a finished piece of the job.
//!
//! It records how many input lines have been fully handled, how many bytes of the
//! output and errors files hold their results, and the fingerprint of the input
//! those lines came from (see [`crate::fingerprint`]). It is rewritten (a new file
//! renamed over the old one, so it is whole at every moment) only after those bytes
//! were written, so after a SIGKILL at any point it never claims more than the files
//! hold. `--resume` cuts the files back to the recorded lengths, skips the recorded
//! number of input lines, and goes on: the finished files equal an uninterrupted
//! run's. The journal is deleted when a job completes.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::fingerprint::{Expected, Fingerprint};

/// The journal's name is the output's with this appended.
pub const SUFFIX: &str = ".pstream-resume";

/// 2: the input is identified by the fingerprint of its handled prefix, not by its
/// name.
const VERSION: u64 = 2;

/// How far an interrupted run got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Input lines handled (each has its output line or its error record).
    pub lines: u64,
    /// Bytes of the output file that hold those lines' results.
    pub output_bytes: u64,
    /// Bytes of the errors file that hold their error records.
    pub errors_bytes: u64,
}

/// Why a journal could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("read the resume journal {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("read the resume journal {path}: it is not a journal written by this version of pstream-coord")]
    Invalid { path: PathBuf },
    #[error(
        "resume: {path} was written by a different job ({recorded}); \
         run with the same --function, --plugin, --input, --format and --errors, \
         or without --resume to start over"
    )]
    OtherJob { path: PathBuf, recorded: String },
}

/// The journal of one output file.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    tmp: PathBuf,
    /// What identifies the job, so that --resume does not continue another one.
    job: Value,
    last: Option<Progress>,
}

impl Journal {
    pub fn for_output(output: &Path, job: Value) -> Journal {
        let path = Journal::path_for(output);
        Journal {
            tmp: Journal::tmp_for(&path),
            path,
            job,
            last: None,
        }
    }

    /// The journal of `output`: its name with [`SUFFIX`] appended.
    pub fn path_for(output: &Path) -> PathBuf {
        let mut path = output.as_os_str().to_owned();
        path.push(SUFFIX);
        PathBuf::from(path)
    }

    /// Where the next record of the journal at `path` is written before it is
    /// renamed over it.
    pub fn tmp_for(path: &Path) -> PathBuf {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        PathBuf::from(tmp)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What an earlier run of this job recorded, and what it read of the input;
    /// `None` if there is no journal.
    pub fn load(&self) -> Result<Option<(Progress, Expected)>, JournalError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(JournalError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let invalid = || JournalError::Invalid {
            path: self.path.clone(),
        };
        let value: Value = serde_json::from_str(&text).map_err(|_| invalid())?;
        if value["version"].as_u64() != Some(VERSION) {
            return Err(invalid());
        }
        if value["job"] != self.job {
            return Err(JournalError::OtherJob {
                path: self.path.clone(),
                recorded: value["job"].to_string(),
            });
        }
        let field = |name: &str| value[name].as_u64().ok_or_else(invalid);
        let progress = Progress {
            lines: field("lines")?,
            output_bytes: field("output_bytes")?,
            errors_bytes: field("errors_bytes")?,
        };
        let handled = Fingerprint::from_json(&value["input"])
            .filter(|f| f.lines == progress.lines)
            .ok_or_else(invalid)?;
        let checkpoints = value["checkpoints"]
            .as_array()
            .ok_or_else(invalid)?
            .iter()
            .map(|c| Fingerprint::from_json(c).ok_or_else(invalid))
            .collect::<Result<_, _>>()?;
        Ok(Some((
            progress,
            Expected {
                handled,
                checkpoints,
            },
        )))
    }

    /// Whether `progress` is what the journal says already.
    pub fn records(&self, progress: Progress) -> bool {
        self.last == Some(progress)
    }

    /// Record `progress`, whose bytes must already be written, with `input`: the
    /// fingerprint of the input lines it counts, and the checkpoints within them.
    /// Atomic: a reader sees the old record or the new one.
    pub fn record(
        &mut self,
        progress: Progress,
        input: (Fingerprint, Vec<Fingerprint>),
    ) -> io::Result<()> {
        if self.records(progress) {
            return Ok(());
        }
        let (handled, checkpoints) = input;
        let record = json!({
            "version": VERSION,
            "job": self.job,
            "lines": progress.lines,
            "output_bytes": progress.output_bytes,
            "errors_bytes": progress.errors_bytes,
            "input": handled.to_json(),
            "checkpoints": checkpoints.into_iter().map(Fingerprint::to_json).collect::<Vec<_>>(),
        });
        fs::write(&self.tmp, format!("{record}\n"))?;
        fs::rename(&self.tmp, &self.path)?;
        self.last = Some(progress);
        Ok(())
    }

    /// The job completed: nothing is left to resume.
    pub fn remove(&self) -> io::Result<()> {
        let _ = fs::remove_file(&self.tmp);
        match fs::remove_file(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_name_their_job() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.txt");
        let mut journal = Journal::for_output(&out, json!({"function": "double"}));
        assert_eq!(journal.path(), dir.path().join("out.txt.pstream-resume"));
        assert!(journal.load().unwrap().is_none());
        let p = Progress {
            lines: 10,
            output_bytes: 30,
            errors_bytes: 0,
        };
        let input = Fingerprint {
            lines: 10,
            bytes: 21,
            sha256: [7; 32],
        };
        let one = Fingerprint {
            lines: 1,
            bytes: 2,
            sha256: [1; 32],
        };
        journal.record(p, (input, vec![one])).unwrap();
        let (progress, expected) = journal.load().unwrap().unwrap();
        assert_eq!(progress, p);
        assert_eq!(expected.handled, input);
        assert_eq!(expected.checkpoints, [one]);

        let other = Journal::for_output(&out, json!({"function": "upper"}));
        assert!(matches!(other.load(), Err(JournalError::OtherJob { .. })));

        fs::write(journal.path(), "garbage").unwrap();
        assert!(matches!(journal.load(), Err(JournalError::Invalid { .. })));

        journal.remove().unwrap();
        assert!(!journal.path().exists());
        journal.remove().unwrap();
    }
}
