//! The Python peer: `multiprocessing.Pool.imap`, from a script written to a temp file.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::BoxError;

const SCRIPT: &str = r#"
import sys, time
from multiprocessing import Pool

def double(x):
    return x * 2

if __name__ == "__main__":
    n, workers, chunksize = (int(a) for a in sys.argv[1:4])
    t0 = time.perf_counter()
    with Pool(workers) as pool:
        # Pool() returns before its workers have started: wait for them.
        pool.map(double, range(workers), chunksize=1)
        t1 = time.perf_counter()
        total = 0
        for r in pool.imap(double, range(n), chunksize=chunksize):
            total += r
        t2 = time.perf_counter()
    print(t1 - t0, t2 - t1, total)
"#;

/// A Python interpreter and the script, ready to run.
#[derive(Debug)]
pub struct Python {
    version: String,
    script: tempfile::NamedTempFile,
}

/// What one run of the script measured.
#[derive(Debug, Clone, Copy)]
pub struct PythonRun {
    /// Seconds from `Pool(workers)` until every worker has answered once.
    pub start: f64,
    /// Seconds for the `imap` over all items.
    pub map: f64,
    /// The sum of the results, to check them.
    pub sum: u64,
}

impl Python {
    /// `python3`, if it is installed and runs; `Err` says why not.
    pub fn find() -> Result<Python, String> {
        let output = Command::new("python3")
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("python3 not found ({e})"))?;
        if !output.status.success() {
            return Err(format!("python3 --version failed ({})", output.status));
        }
        let version = String::from_utf8_lossy(&output.stdout).trim().to_string();
        let mut script = tempfile::Builder::new()
            .prefix("pstream-bench-")
            .suffix(".py")
            .tempfile()
            .map_err(|e| format!("cannot write the Python script: {e}"))?;
        script
            .write_all(SCRIPT.as_bytes())
            .map_err(|e| format!("cannot write the Python script: {e}"))?;
        Ok(Python { version, script })
    }

    /// `Python 3.x.y`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Double `0..n` with `Pool(workers).imap(chunksize)`.
    pub fn imap_double(
        &self,
        n: u64,
        workers: usize,
        chunksize: usize,
    ) -> Result<PythonRun, BoxError> {
        let output = Command::new("python3")
            .arg(self.script.path())
            .args([n.to_string(), workers.to_string(), chunksize.to_string()])
            .stdin(Stdio::null())
            .output()?;
        if !output.status.success() {
            return Err(format!(
                "python3 failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )
            .into());
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let fields: Vec<&str> = stdout.split_whitespace().collect();
        if fields.len() != 3 {
            return Err(format!("unexpected output from the Python script: {stdout:?}").into());
        }
        Ok(PythonRun {
            start: fields[0].parse()?,
            map: fields[1].parse()?,
            sum: fields[2].parse()?,
        })
    }
}
