//! What travels between the launcher and its workers for `exec` and `pipe`: the
//! job's settings (once, in the workers' environment), the items and the outcomes
//! (bincode, bytes as bytes).

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use pstream_examples::Blob;
use serde::{Deserialize, Serialize};

/// The environment variable that carries [`Settings`] to the workers.
pub const ENV_SETTINGS: &str = "PSTREAM_SHELL_SETTINGS";

/// The job's settings, the same for every item.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    /// The command template, argument by argument.
    pub argv: Vec<Blob>,
    /// `exec --tag`: prefix each output line with the item and a tab.
    pub tag: bool,
    /// `pipe`: find the lines a failing block fails on.
    pub bisect: bool,
    /// The line separator (`\n`, or NUL with `--null`).
    pub separator: u8,
}

impl Settings {
    pub fn new(argv: &[OsString], tag: bool, bisect: bool, separator: u8) -> Settings {
        Settings {
            argv: argv.iter().map(|a| Blob(a.as_bytes().to_vec())).collect(),
            tag,
            bisect,
            separator,
        }
    }

    pub fn argv(&self) -> Vec<OsString> {
        self.argv
            .iter()
            .map(|a| OsString::from_vec(a.0.clone()))
            .collect()
    }

    /// As an environment variable's value: hex of the bincode encoding.
    pub fn to_env(&self) -> String {
        let mut bytes = Vec::new();
        pstream::protocol::encode_bincode(self, &mut bytes).expect("settings encode");
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_env(value: &str) -> Option<Settings> {
        let hex = value.as_bytes();
        if hex.len() % 2 != 0 {
            return None;
        }
        let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        let bytes: Option<Vec<u8>> = hex
            .chunks(2)
            .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
            .collect();
        let (settings, used) = pstream::protocol::decode_bincode::<Settings>(&bytes?).ok()?;
        (used == hex.len() / 2).then_some(settings)
    }
}

/// One `exec` item.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecItem {
    /// Its line number in the whole input, from 1.
    pub line: u64,
    pub item: Blob,
}

/// How one command ran.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Ran {
    /// When it started, in seconds since the epoch.
    pub start: f64,
    /// How long it ran, in seconds.
    pub runtime: f64,
    /// Its exit code: 126/127 if it could not be started, 0 if a signal killed
    /// it (as GNU parallel logs it), -1 if its worker was killed (a time limit).
    pub exit: i32,
    /// The signal that killed it, or 0.
    pub signal: i32,
    /// Bytes written to its stdin and read from its stdout.
    pub sent: u64,
    pub received: u64,
    /// Why it failed (exit code or signal, and the end of its stderr); `None`
    /// when it succeeded.
    pub error: Option<String>,
}

/// What an `exec` item gave.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecOutcome {
    pub ran: Ran,
    /// Its stdout (tagged with `--tag`); empty if it failed.
    pub stdout: Blob,
}

/// One `pipe` block: whole lines, each with its separator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipeItem {
    /// The line number of its first line in the whole input, from 1.
    pub first_line: u64,
    pub data: Blob,
}

/// Lines a command failed on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LineFailure {
    /// The first line's number in the whole input, and how many lines.
    pub line: u64,
    pub lines: u64,
    /// The lines, each with its separator.
    pub input: Blob,
    pub error: String,
}

/// What a `pipe` block gave.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipeOutcome {
    /// The first run, over the whole block.
    pub ran: Ran,
    /// Commands run for the block (1 unless it was bisected).
    pub runs: u64,
    /// Lines in the block.
    pub lines: u64,
    /// The output of every line that did not fail, in order.
    pub output: Blob,
    /// The lines that failed, in order.
    pub failures: Vec<LineFailure>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_survive_the_environment() {
        let argv = vec![
            OsString::from("sh"),
            OsString::from_vec(b"-c\n\xff{}".to_vec()),
        ];
        let s = Settings::new(&argv, true, false, 0);
        let back = Settings::from_env(&s.to_env()).unwrap();
        assert_eq!(back.argv(), argv);
        assert!(back.tag && !back.bisect && back.separator == 0);
        assert!(Settings::from_env("zz").is_none());
        assert!(Settings::from_env("").is_none());
    }
}
