//! The command-line scenario (7): the launcher, `pstream-coord`, against the shell
//! tools people use instead: GNU `parallel --pipe`, `xargs -P`, a Python
//! `multiprocessing` script and a single `awk` or `sha256sum` process.
//!
//! Nothing here depends on the launcher's crate: its release binary is driven as a
//! process, found next to this executable (`target/release/pstream-coord`). Every
//! contender is a shell command run with `sh -c`, timed from spawn to exit (process
//! and pool start included, for every contender alike), in interleaved rounds.
//! Every contender's output is checked: a wrong output is reported as such.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::chart::{Bar, Chart, Plot};
use crate::report::{count, median, median_ratio, rate, ratio, secs, Summary, Table};
use crate::{BoxError, Settings};

/// The `lines` target: pstream-coord's throughput ÷ GNU parallel --pipe's.
const LINES_TARGET: f64 = 2.0;
/// The `sha256sum` target: pstream-coord's throughput ÷ `xargs -P -n500`'s.
const SUM_TARGET: f64 = 1.0;

/// One contender: a shell command, its times, and whether it ran and was right.
#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) name: String,
    /// The command as shown (`pstream-coord` without its directory).
    pub(crate) shown: String,
    /// The command as run by `sh -c`.
    pub(crate) script: String,
    pub(crate) times: Vec<f64>,
    pub(crate) skipped: Option<String>,
    pub(crate) wrong: Option<String>,
}

impl Peer {
    pub(crate) fn new(
        name: impl Into<String>,
        shown: impl Into<String>,
        script: impl Into<String>,
    ) -> Peer {
        Peer {
            name: name.into(),
            shown: shown.into(),
            script: script.into(),
            times: Vec::new(),
            skipped: None,
            wrong: None,
        }
    }

    pub(crate) fn skipped(name: impl Into<String>, why: impl Into<String>) -> Peer {
        let mut p = Peer::new(name, "", "");
        p.skipped = Some(why.into());
        p
    }

    pub(crate) fn runs(&self) -> bool {
        self.skipped.is_none()
    }

    /// Keep the first reason the output was wrong.
    pub(crate) fn mark_wrong(&mut self, why: String) {
        self.wrong.get_or_insert(why);
    }

    /// Median over rounds of (this time ÷ `base`'s time): how many times faster
    /// `base` is than this one.
    pub(crate) fn slowdown_vs(&self, base: &Peer) -> f64 {
        median_ratio(&self.times, &base.times)
    }
}

/// Quote `s` for `sh` when it needs it.
pub(crate) fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The last lines of a command's stderr, for a message.
fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    let mut lines: Vec<&str> = lines.into_iter().rev().collect();
    lines.retain(|l| !l.trim().is_empty());
    lines.join(" / ")
}

/// Run `script` with `sh -c`, stdout to a pipe that is read whole; returns the
/// seconds from spawn to exit and the stdout.
pub(crate) fn run_capture(script: &str) -> Result<(f64, Vec<u8>), String> {
    let start = Instant::now();
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("could not run sh: {e}"))?;
    let t = start.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(format!("failed ({}): {}", out.status, tail(&out.stderr)));
    }
    Ok((t, out.stdout))
}

/// Run `script` with `sh -c` (it redirects its own output); returns the seconds
/// from spawn to exit.
pub(crate) fn run_timed(script: &str) -> Result<f64, String> {
    let start = Instant::now();
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("could not run sh: {e}"))?;
    let t = start.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(format!("failed ({}): {}", out.status, tail(&out.stderr)));
    }
    Ok(t)
}

/// Run `script` with `sh -c` and return the SHA-256 and the length of its stdout,
/// read as it comes.
pub(crate) fn run_digest(script: &str) -> Result<([u8; 32], u64), String> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not run sh: {e}"))?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    // stderr is drained on a thread so that a chatty one cannot block the command.
    let errors = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut len = 0u64;
    loop {
        match stdout.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                hasher.update(&buf[..k]);
                len += k as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading its output: {e}")),
        }
    }
    let status = child.wait().map_err(|e| format!("waiting for sh: {e}"))?;
    let errors = errors.join().unwrap_or_default();
    if !status.success() {
        return Err(format!("failed ({status}): {}", tail(&errors)));
    }
    Ok((hasher.finalize().into(), len))
}

// ---------------------------------------------------------------------------------
// Finding the launcher and the peers

/// `pstream-coord` next to this executable (both are built into `target/release`).
pub(crate) fn find_coord() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("no current executable: {e}"))?;
    let dir = exe
        .parent()
        .ok_or("the current executable has no directory")?;
    let coord = dir.join("pstream-coord");
    if coord.is_file() {
        Ok(coord)
    } else {
        Err(format!("no `{}`", coord.display()))
    }
}

/// `apt-get install -y PACKAGE`, after an `apt-get update` if the first try fails.
fn apt_install(package: &str) -> Result<(), String> {
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
    };
    match apt(&["install", "-y", "-q", package]) {
        Ok(o) if o.status.success() => return Ok(()),
        Ok(_) => {}
        Err(e) => return Err(format!("apt-get could not run ({e})")),
    }
    let _ = apt(&["update", "-q"]);
    match apt(&["install", "-y", "-q", package]) {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "`apt-get install -y {package}` failed ({}): {}",
            o.status,
            tail(&o.stderr)
        )),
        Err(e) => Err(format!("apt-get could not run ({e})")),
    }
}

/// The first line of `program args...`'s output if it runs and succeeds.
pub(crate) fn version_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .map(|l| l.trim().to_string())
}

/// A program the bench can install: its version line, after installing `package`
/// with apt-get if `probe` finds it missing; `Err` says why it is not there.
fn ensure(what: &str, package: &str, probe: impl Fn() -> Option<String>) -> Result<String, String> {
    if let Some(v) = probe() {
        return Ok(v);
    }
    println!("- {what} is missing: trying `apt-get install -y {package}`");
    apt_install(package).map_err(|e| format!("{what} is not installed and {e}"))?;
    probe().ok_or_else(|| format!("{what} is still missing after `apt-get install -y {package}`"))
}

/// GNU parallel (not moreutils' `parallel`), installed if missing.
pub(crate) fn gnu_parallel() -> Result<String, String> {
    ensure("GNU parallel", "parallel", || {
        version_line("parallel", &["--version"]).filter(|v| v.starts_with("GNU parallel"))
    })
}

/// The real python3 executable (not a pyenv shim) and its version, installed if
/// missing.
fn python3() -> Result<(String, String), String> {
    let version = ensure("python3", "python3", || {
        version_line("python3", &["--version"])
    })?;
    let exe = version_line("python3", &["-c", "import sys; print(sys.executable)"])
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".into());
    Ok((exe, version))
}

/// The Python contender: `Pool(workers).imap` over stdin's lines.
const PY_DOUBLE: &str = r#"import sys
from multiprocessing import Pool


def f(line):
    return "%d\n" % (int(line) * 2)


if __name__ == "__main__":
    with Pool(int(sys.argv[1])) as pool:
        sys.stdout.writelines(pool.imap(f, sys.stdin, chunksize=1000))
"#;

// ---------------------------------------------------------------------------------
// The scenario

/// Both parts of the CLI scenario.
pub fn cli_scenario(s: &Settings, summary: &mut Summary) -> Result<(), BoxError> {
    println!("## 7. Command line: `pstream-coord` vs GNU parallel, xargs, Python, awk");
    println!();
    let coord = match find_coord() {
        Ok(c) => c,
        Err(why) => {
            println!(
                "- skipped: {why}; run `cargo build --release -p pstream-coord` \
                 (`just bench` builds it) and run the bench again"
            );
            println!();
            summary.add(
                "cli double: pstream-coord ÷ GNU parallel --pipe",
                "–".into(),
                "≥ 2×",
                None,
            );
            summary.add(
                &format!("cli sha256sum: pstream-coord ÷ xargs -P{} -n500", s.workers),
                "–".into(),
                "≥ 1× (ordered)",
                None,
            );
            return Ok(());
        }
    };
    println!(
        "Every contender is one shell command run with `sh -c`, timed from spawn to exit \
         (process and pool start included); `pstream-coord` is `{}`, with its default \
         of one worker per CPU ({}).",
        // Shown relative to the working directory: no machine's paths in the report.
        std::env::current_dir()
            .ok()
            .and_then(|dir| coord.strip_prefix(dir).ok())
            .unwrap_or(&coord)
            .display(),
        s.workers
    );
    println!();
    lines_scenario(s, summary, &coord)?;
    checksum_scenario(s, summary, &coord)?;
    Ok(())
}

/// SHA-256 and length of `2\n4\n...\n(2n)\n`: the right output of every contender.
pub(crate) fn expected_doubles(n: u64) -> ([u8; 32], u64) {
    let mut hasher = Sha256::new();
    let mut buf = Vec::with_capacity(1 << 20);
    let mut len = 0u64;
    for i in 1..=n {
        writeln!(buf, "{}", 2 * i).expect("writing to a Vec");
        if buf.len() >= (1 << 20) - 32 {
            hasher.update(&buf);
            len += buf.len() as u64;
            buf.clear();
        }
    }
    hasher.update(&buf);
    len += buf.len() as u64;
    (hasher.finalize().into(), len)
}

pub(crate) fn print_peers(
    summary: &mut Summary,
    (stem, title): (&str, &str),
    unit: &str,
    items: u64,
    extra: Option<(&str, f64)>,
    peers: &[&Peer],
    base: &Peer,
) {
    let per_sec = |t: f64| items as f64 / t;
    summary.chart(Chart {
        stem: stem.into(),
        title: title.into(),
        plot: Plot::Bars {
            unit: format!("{unit} (median; whisker: slowest to fastest round)"),
            bars: peers
                .iter()
                .filter(|p| p.runs() && !p.times.is_empty())
                .map(|p| Bar {
                    name: p.name.replace('`', ""),
                    value: per_sec(median(&p.times)),
                    range: Some((
                        per_sec(p.times.iter().copied().fold(0.0, f64::max)),
                        per_sec(p.times.iter().copied().fold(f64::INFINITY, f64::min)),
                    )),
                })
                .collect(),
        },
    });
    let mut headers = vec!["contender", "median time", unit];
    if let Some((h, _)) = extra {
        headers.push(h);
    }
    let base_col = format!("{} ÷ this (throughput)", base.name);
    headers.push(&base_col);
    headers.push("output");
    let mut table = Table::new(&headers);
    for p in peers {
        if let Some(why) = &p.skipped {
            table.row(vec![p.name.clone(), "skipped".into(), why.clone()]);
            continue;
        }
        let t = median(&p.times);
        let mut row = vec![p.name.clone(), secs(t), rate(items as f64 / t)];
        if let Some((_, per)) = extra {
            row.push(format!("{:.0} MB/s", per / t / 1e6));
        }
        row.push(ratio(p.slowdown_vs(base)));
        row.push(match &p.wrong {
            // A row measured in the bench process (the shell scenario's floor).
            None if p.script.is_empty() => "not read".into(),
            None => "correct".into(),
            Some(why) => format!("**WRONG**: {why}"),
        });
        table.row(row);
    }
    table.print();
}

pub(crate) fn print_commands(peers: &[&Peer]) {
    for p in peers.iter().filter(|p| p.runs()) {
        println!("- {}: `{}`", p.name, p.shown);
    }
    println!();
}

// ---------------------------------------------------------------------------------
// 7a. Lines per second of `double`

fn lines_scenario(s: &Settings, summary: &mut Summary, coord: &Path) -> Result<(), BoxError> {
    let n: u64 = if s.quick { 2_000_000 } else { 20_000_000 };
    let j = s.workers;
    println!(
        "### 7a. Lines per second: doubling `seq 1 {n}` ({} lines)",
        count(n)
    );
    println!();
    let feed = format!("seq 1 {n} | ");
    let awk_prog = "awk '{print $1*2}'";

    let mut ps = Peer::new(
        "pstream-coord",
        format!("{feed}pstream-coord run --function double --format jsonl > /dev/null"),
        format!(
            "{feed}{} run --function double --format jsonl",
            sh_quote(&coord.to_string_lossy())
        ),
    );
    let mut par = match gnu_parallel() {
        Ok(v) => {
            // The command goes to parallel as one string, which it runs with a
            // shell: `parallel ... awk '{print $1*2}'` would lose the quotes.
            let cmd = format!(
                "{feed}parallel --will-cite --pipe --keep-order -j{j} \"awk '{{print \\$1*2}}'\""
            );
            Peer::new(format!("{v} `--pipe`"), format!("{cmd} > /dev/null"), cmd)
        }
        Err(why) => Peer::skipped("GNU parallel `--pipe`", why),
    };
    // The script lives until the end of this function.
    let mut script = tempfile::Builder::new()
        .prefix("pstream-bench-cli-")
        .suffix(".py")
        .tempfile()?;
    script.write_all(PY_DOUBLE.as_bytes())?;
    script.flush()?;
    let mut py = match python3() {
        Ok((exe, version)) => {
            let cmd = format!(
                "{feed}{} {} {j}",
                sh_quote(&exe),
                sh_quote(&script.path().to_string_lossy())
            );
            Peer::new(
                format!("{version} `Pool({j}).imap(chunksize=1000)`"),
                format!("{feed}python3 double.py {j} > /dev/null   # Pool({j}).imap(f, sys.stdin, chunksize=1000)"),
                cmd,
            )
        }
        Err(why) => Peer::skipped("Python `Pool.imap`", why),
    };
    let mut awk = match version_line("awk", &["-W", "version"]) {
        Some(v) => {
            let cmd = format!("{feed}{awk_prog}");
            Peer::new(
                format!("one `awk` ({v})"),
                format!("{cmd} > /dev/null"),
                cmd,
            )
        }
        None => Peer::skipped("one `awk`", "awk is not installed"),
    };
    print_commands(&[&ps, &par, &py, &awk]);

    // Round 0 checks every output (piped into the bench and hashed) and warms up;
    // the timed rounds write to /dev/null, as the commands above do.
    let (want, want_len) = expected_doubles(n);
    for p in [&mut ps, &mut par, &mut py, &mut awk] {
        if !p.runs() {
            continue;
        }
        match run_digest(&p.script) {
            Ok((got, _)) if got == want => {}
            Ok((_, len)) => p.mark_wrong(format!(
                "output differs from `2\\n4\\n…` ({len} bytes, expected {want_len})"
            )),
            Err(why) => p.skipped = Some(why),
        }
    }
    if !ps.runs() {
        return Err(format!(
            "pstream-coord failed: {}",
            ps.skipped.as_deref().unwrap_or("")
        )
        .into());
    }
    for _ in 0..s.runs {
        for p in [&mut ps, &mut par, &mut py, &mut awk] {
            if !p.runs() {
                continue;
            }
            match run_timed(&format!("{} > /dev/null", p.script)) {
                Ok(t) => p.times.push(t),
                Err(why) => p.skipped = Some(why),
            }
        }
        if !ps.runs() {
            return Err(format!(
                "pstream-coord failed: {}",
                ps.skipped.as_deref().unwrap_or("")
            )
            .into());
        }
    }
    print_peers(
        summary,
        (
            "cli-lines",
            &format!("doubling {} lines on the command line", count(n)),
        ),
        "lines/s",
        n,
        None,
        &[&ps, &par, &py, &awk],
        &ps,
    );
    let vs_par = par.slowdown_vs(&ps);
    if par.runs() {
        println!(
            "- pstream-coord / GNU parallel --pipe throughput: **{}** (target ≥ {LINES_TARGET}×)",
            ratio(vs_par)
        );
    }
    if awk.runs() {
        println!(
            "- pstream-coord / one awk process: **{}**",
            ratio(awk.slowdown_vs(&ps))
        );
    }
    println!();
    summary.add(
        "cli double: pstream-coord ÷ GNU parallel --pipe",
        ratio(vs_par),
        "≥ 2×",
        par.runs()
            .then_some(vs_par >= LINES_TARGET && ps.wrong.is_none()),
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// 7b. Checksumming a list of files

/// Regular files (not symlinks) under `dir`, in sorted walk order, with their
/// sizes; names that are not UTF-8 or hold a newline cannot be lines of a list and
/// are left out.
fn walk(dir: &Path, out: &mut Vec<(String, u64)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            walk(&path, out);
        } else if meta.is_file() {
            if let Some(name) = path.to_str() {
                if !name.contains('\n') {
                    out.push((name.to_string(), meta.len()));
                }
            }
        }
    }
}

/// The files to checksum: `files` of them spread evenly over the walk of the
/// roots, with a per-file size limit (halved until they add up to at most
/// `max_bytes`), readable ones only. Returns the list and the size limit used.
fn pick_files(roots: &[&str], files: usize, max_bytes: u64) -> (Vec<(String, u64)>, u64) {
    let mut all = Vec::new();
    for r in roots {
        walk(Path::new(r), &mut all);
    }
    let readable = |p: &str| File::open(p).is_ok();
    let mut limit = 64u64 << 20;
    loop {
        let fit: Vec<&(String, u64)> = all.iter().filter(|(_, len)| *len <= limit).collect();
        let mut picked = Vec::new();
        let mut total = 0u64;
        let take = files.min(fit.len());
        for k in 0..take {
            let (p, len) = fit[k * fit.len() / take];
            if readable(p) {
                picked.push((p.clone(), *len));
                total += len;
            }
        }
        if total <= max_bytes || limit <= 4096 {
            // At the smallest limit, cut the list at the byte cap.
            let mut sum = 0u64;
            picked.retain(|(_, len)| {
                sum += len;
                sum <= max_bytes
            });
            return (picked, limit);
        }
        limit /= 2;
    }
}

/// A size limit in KiB or MiB.
fn mib(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

/// Read every file once, so that every contender finds them in the page cache.
fn warm(files: &[(String, u64)]) {
    let mut buf = vec![0u8; 1 << 20];
    for (p, _) in files {
        if let Ok(mut f) = File::open(p) {
            while let Ok(k) = f.read(&mut buf) {
                if k == 0 {
                    break;
                }
            }
        }
    }
}

pub(crate) fn sorted_lines(out: &[u8]) -> Vec<&[u8]> {
    let mut v: Vec<&[u8]> = out.split(|&b| b == b'\n').collect();
    v.sort_unstable();
    v
}

/// Where two outputs first differ, for a message.
fn first_difference(got: &[u8], want: &[u8]) -> String {
    let got_lines: Vec<&[u8]> = got.split(|&b| b == b'\n').collect();
    let want_lines: Vec<&[u8]> = want.split(|&b| b == b'\n').collect();
    match got_lines.iter().zip(&want_lines).position(|(a, b)| a != b) {
        Some(i) => format!(
            "line {} differs ({} lines, expected {})",
            i + 1,
            got_lines.len() - 1,
            want_lines.len() - 1
        ),
        None => format!(
            "{} lines, expected {}",
            got_lines.len() - 1,
            want_lines.len() - 1
        ),
    }
}

fn checksum_scenario(s: &Settings, summary: &mut Summary, coord: &Path) -> Result<(), BoxError> {
    let (files, max_bytes) = if s.quick {
        (5_000, 50_000_000)
    } else {
        (40_000, 400_000_000)
    };
    let roots = ["/usr/share", "/usr/lib"];
    let (d, (list, limit)) = crate::report::timed(|| pick_files(&roots, files, max_bytes));
    let total: u64 = list.iter().map(|(_, len)| len).sum();
    let n = list.len() as u64;
    println!(
        "### 7b. Checksumming a list of {} files ({:.0} MB) with `sha256sum`",
        count(n),
        total as f64 / 1e6
    );
    println!();
    if list.is_empty() {
        println!("- skipped: no readable files under {}", roots.join(" and "));
        println!();
        return Ok(());
    }
    let mut text = String::new();
    for (p, _) in &list {
        text.push_str(p);
        text.push('\n');
    }
    let mut list_file = tempfile::Builder::new()
        .prefix("pstream-bench-files-")
        .suffix(".txt")
        .tempfile()?;
    list_file.write_all(text.as_bytes())?;
    list_file.flush()?;
    let (w, ()) = crate::report::timed(|| warm(&list));
    println!(
        "- the list: regular readable files (no symlinks) spread evenly over a sorted walk \
         of {}, at most {} each, {} in all (picked in {}; page cache warmed by reading \
         them all once, {})",
        roots.join(" and "),
        mib(limit),
        count(n),
        secs(d.as_secs_f64()),
        secs(w.as_secs_f64())
    );
    let j = s.workers;
    let list_path = sh_quote(&list_file.path().to_string_lossy());
    let mut single = Peer::new(
        "one `sha256sum` (`xargs`, no -P)",
        "xargs -d '\\n' sha256sum < LIST",
        format!("xargs -d '\\n' sha256sum < {list_path}"),
    );
    let mut ps = Peer::new(
        "pstream-coord",
        "pstream-coord run --function sha256sum --input LIST",
        format!(
            "{} run --function sha256sum --input {list_path}",
            sh_quote(&coord.to_string_lossy())
        ),
    );
    let mut xp = Peer::new(
        format!("`xargs -P{j} -n500` (unordered)"),
        format!("xargs -d '\\n' -P{j} -n500 sha256sum < LIST"),
        format!("xargs -d '\\n' -P{j} -n500 sha256sum < {list_path}"),
    );
    print_commands(&[&single, &ps, &xp]);

    let mut reference: Option<Vec<u8>> = None;
    for _ in 0..s.runs {
        // The single process is the reference: its output is coreutils' own.
        let want = match run_capture(&single.script) {
            Ok((t, out)) => {
                single.times.push(t);
                let first = reference.get_or_insert_with(|| out.clone());
                if *first != out {
                    single.mark_wrong("not the same output in every round".into());
                }
                out
            }
            Err(why) => {
                return Err(format!("the reference `xargs sha256sum` failed: {why}").into());
            }
        };
        let lines = want.iter().filter(|&&b| b == b'\n').count() as u64;
        if lines != n {
            single.mark_wrong(format!("{lines} lines for {n} files"));
        }
        match run_capture(&ps.script) {
            Ok((t, out)) => {
                ps.times.push(t);
                if out != want {
                    ps.mark_wrong(first_difference(&out, &want));
                }
            }
            Err(why) => return Err(format!("pstream-coord failed: {why}").into()),
        }
        if xp.runs() {
            match run_capture(&xp.script) {
                Ok((t, out)) => {
                    xp.times.push(t);
                    if sorted_lines(&out) != sorted_lines(&want) {
                        xp.mark_wrong("not the same lines, sorted".into());
                    }
                }
                Err(why) => xp.skipped = Some(why),
            }
        }
    }
    println!(
        "- checked: pstream-coord's output byte for byte against the single `sha256sum`'s \
         (same order); `xargs -P`'s sorted against it sorted"
    );
    println!();
    print_peers(
        summary,
        (
            "cli-sha256sum",
            &format!("sha256sum over {} files", count(n)),
        ),
        "files/s",
        n,
        Some(("MB/s", total as f64)),
        &[&ps, &xp, &single],
        &ps,
    );
    let vs_xp = xp.slowdown_vs(&ps);
    if xp.runs() {
        println!(
            "- pstream-coord (ordered) / `xargs -P{j} -n500` (unordered) throughput: **{}** (target ≥ {SUM_TARGET}×)",
            ratio(vs_xp)
        );
    }
    println!(
        "- pstream-coord / one sha256sum: **{}**",
        ratio(single.slowdown_vs(&ps))
    );
    println!();
    summary.add(
        &format!("cli sha256sum: pstream-coord ÷ xargs -P{j} -n500"),
        ratio(vs_xp),
        "≥ 1× (ordered)",
        xp.runs()
            .then_some(vs_xp >= SUM_TARGET && ps.wrong.is_none()),
    );
    Ok(())
}
