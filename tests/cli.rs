//! End-to-end tests of the `pstream-coord` launcher: they run the built binary over
//! real processes, real pipes, a real terminal and real signals.

#[path = "support/cli.rs"]
mod util;

use std::fmt::Write as _;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sys::signal::Signal;
use util::*;

fn seq(n: u64) -> Vec<u8> {
    let out = Command::new("seq").arg("1").arg(n.to_string()).output();
    let out = out.expect("run seq");
    assert!(out.status.success(), "seq failed: {out:?}");
    out.stdout
}

/// Run a shell filter (awk, tr, ...) over `input`.
fn shell_filter(script: &str, input: &[u8]) -> Vec<u8> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script);
    expect_code(&mut cmd, Some(input), 0).stdout
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("create a temporary directory")
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    if got != want {
        let at = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        let from = at.saturating_sub(60);
        panic!(
            "{what}: outputs differ at byte {at} (got {} bytes, want {})\n--- got:  {:?}\n--- want: {:?}",
            got.len(),
            want.len(),
            String::from_utf8_lossy(&got[from..(at + 60).min(got.len())]),
            String::from_utf8_lossy(&want[from..(at + 60).min(want.len())]),
        );
    }
}

// ---------------------------------------------------------------------------------
// Results: the same bytes the shell's tools produce.

#[test]
fn double_over_seq_equals_awk() {
    let input = seq(scale(1_000_000));
    let want = shell_filter("awk '{print $1*2}'", &input);
    let out = expect_code(
        &mut coord(&["run", "--function", "double", "--format", "jsonl"]),
        Some(&input),
        0,
    );
    assert_same("double over seq", &out.stdout, &want);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(" ok, 0 failed"),
        "no summary line on stderr: {stderr}"
    );
}

#[test]
fn double_with_no_spin_or_the_longest_equals_awk() {
    let input = seq(scale(200_000));
    let want = shell_filter("awk '{print $1*2}'", &input);
    for spin in ["0", "5ms"] {
        let out = expect_code(
            &mut coord(&["run", "-f", "double", "--format", "jsonl", "--spin", spin]),
            Some(&input),
            0,
        );
        assert_same(&format!("double with --spin {spin}"), &out.stdout, &want);
    }
}

#[test]
fn upper_over_a_text_file_equals_tr() {
    // Real text: the workspace's own sources and docs, as ASCII.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut text = Vec::new();
    for dir in [
        "crates/pstream-coordinator/src",
        "crates/pstream-protocol/src",
        "tests",
    ] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for f in files {
            text.extend(std::fs::read(f).unwrap().into_iter().filter(u8::is_ascii));
        }
    }
    assert!(text.len() > 10_000, "too little text to test with");
    let dir = tempdir();
    let input = dir.path().join("text.txt");
    std::fs::write(&input, &text).unwrap();
    let want = shell_filter("tr a-z A-Z", &text);
    let out = expect_code(
        &mut coord(&["run", "--function", "upper", "--input", path_str(&input)]),
        None,
        0,
    );
    assert_same("upper over a text file", &out.stdout, &want);
}

/// Regular files on this machine: the workspace's, the Rust toolchain's and the
/// cargo registry's sources, whatever is found first, in a stable order.
fn real_files(max: usize) -> Vec<PathBuf> {
    let mut roots = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crates")];
    let sysroot = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args(["--print", "sysroot"])
        .output();
    if let Ok(out) = sysroot {
        roots.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("lib"));
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    if let Some(home) = cargo_home {
        roots.push(home.join("registry/src"));
    }
    let mut files = Vec::new();
    for root in roots {
        let mut stack = vec![root];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut entries: Vec<_> = entries.flatten().collect();
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let Ok(kind) = e.file_type() else { continue };
                let path = e.path();
                let Some(name) = path.to_str() else { continue };
                if name.contains(['\n', '\r']) {
                    continue; // A list of paths has one per line.
                }
                if kind.is_dir() {
                    stack.push(path);
                } else if kind.is_file() && std::fs::File::open(&path).is_ok() {
                    files.push(path);
                    if files.len() == max {
                        return files;
                    }
                }
            }
        }
    }
    files
}

#[test]
fn sha256sum_over_real_files_equals_coreutils() {
    let files = real_files(scale(3000) as usize);
    assert!(
        files.len() >= scale(1000) as usize,
        "found only {} files to hash",
        files.len()
    );
    let mut list = String::new();
    for f in &files {
        writeln!(list, "{}", f.to_str().unwrap()).unwrap();
    }
    let want = shell_filter("xargs -d '\\n' sha256sum --", list.as_bytes());
    let out = expect_code(
        &mut coord(&["run", "--function", "sha256sum", "--workers", "2"]),
        Some(list.as_bytes()),
        0,
    );
    assert_same("sha256sum over real files", &out.stdout, &want);
}

// ---------------------------------------------------------------------------------
// Failed items.

fn records(path: &Path) -> Vec<serde_json::Value> {
    String::from_utf8(read(path))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad record {l:?}: {e}")))
        .collect()
}

#[test]
fn malformed_and_mistyped_lines_become_error_records() {
    let dir = tempdir();
    let errors = dir.path().join("errors.jsonl");
    let input = "1\n{\"broken\n2\n\"seven\"\n3\n[4]\n\n9223372036854775807\n2.5\n5\n";
    let out = expect_code(
        &mut coord(&[
            "run",
            "--function",
            "double",
            "--format",
            "jsonl",
            "--errors",
            path_str(&errors),
        ]),
        Some(input.as_bytes()),
        1,
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2\n4\n6\n10\n");
    let records = records(&errors);
    let summary: Vec<(u64, &str, &str)> = records
        .iter()
        .map(|r| {
            (
                r["line"].as_u64().unwrap(),
                r["input"].as_str().unwrap(),
                r["kind"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (2, "{\"broken", "decode"),
            (4, "\"seven\"", "decode"),
            (6, "[4]", "decode"),
            (7, "", "decode"),
            (8, "9223372036854775807", "failed"),
            (9, "2.5", "decode"),
        ],
        "{records:#?}"
    );
    for r in &records {
        assert!(!r["error"].as_str().unwrap().is_empty(), "{r}");
    }
    // One line on stderr per failed item, naming its line.
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in [2, 4, 6, 7, 8, 9] {
        assert!(
            stderr.contains(&format!("line {line}: ")),
            "no message for line {line}:\n{stderr}"
        );
    }
    assert!(stderr.contains("4 ok, 6 failed"), "{stderr}");
}

#[test]
fn a_crashing_item_is_reported_and_the_rest_is_computed() {
    let dir = tempdir();
    let errors = dir.path().join("errors.jsonl");
    let mut input = String::new();
    for i in 0..200 {
        let fault = match i {
            50 => "segv",
            120 => "panic",
            _ => "none",
        };
        writeln!(input, "{{\"value\":{i},\"fault\":\"{fault}\"}}").unwrap();
    }
    let out = expect_code(
        &mut coord(&[
            "run",
            "--function",
            "misbehave",
            "--format",
            "jsonl",
            "--workers",
            "2",
            "--errors",
            path_str(&errors),
        ]),
        Some(input.as_bytes()),
        1,
    );
    let want: String = (0..200)
        .filter(|i| *i != 50 && *i != 120)
        .map(|i| format!("{i}\n"))
        .collect();
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);
    let kinds: Vec<(u64, String)> = records(&errors)
        .iter()
        .map(|r| {
            (
                r["line"].as_u64().unwrap(),
                r["kind"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [(51, "crashed".to_string()), (121, "panicked".to_string())]
    );
}

#[test]
fn on_error_fail_stops_after_writing_every_earlier_result() {
    let dir = tempdir();
    let errors = dir.path().join("errors.jsonl");
    let input: String = (1..=1000)
        .map(|i| {
            if i == 700 {
                "oops\n".to_string()
            } else {
                format!("{i}\n")
            }
        })
        .collect();
    let out = expect_code(
        &mut coord(&[
            "run",
            "--function",
            "double",
            "--format",
            "jsonl",
            "--on-error",
            "fail",
            "--errors",
            path_str(&errors),
        ]),
        Some(input.as_bytes()),
        1,
    );
    let want: String = (1..700).map(|i| format!("{}\n", i * 2)).collect();
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);
    let records = records(&errors);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["line"], 700);
}

#[test]
fn unordered_output_holds_every_result() {
    let input = seq(scale(100_000));
    let out = expect_code(
        &mut coord(&[
            "run",
            "--function",
            "double",
            "--format",
            "jsonl",
            "--unordered",
        ]),
        Some(&input),
        0,
    );
    let mut got: Vec<i64> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    got.sort_unstable();
    let want: Vec<i64> = (1..=scale(100_000) as i64).map(|i| i * 2).collect();
    assert_eq!(got, want);
}

// ---------------------------------------------------------------------------------
// The command line itself.

#[test]
fn functions_lists_names_and_types() {
    let out = expect_code(&mut coord(&["functions"]), None, 0);
    let text = String::from_utf8_lossy(&out.stdout);
    for name in ["double", "upper", "sha256sum", "slow_double", "misbehave"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(name) && l.contains("->")),
            "{name} missing:\n{text}"
        );
    }
    assert!(text.contains("String"), "{text}");
}

#[test]
fn usage_errors_exit_2_and_say_why() {
    let cases: &[(&[&str], &str)] = &[
        (&["run"], "--function"),
        (&["run", "--function", "double", "--bogus"], "--bogus"),
        (&["run", "--function", "nope"], "no function named `nope`"),
        (
            &["run", "--function", "double", "--timeout", "soon"],
            "soon",
        ),
        (&["run", "--function", "double", "--resume"], "--output"),
        (
            &["run", "-f", "double", "-o", "x", "--resume", "--unordered"],
            "ordered mode",
        ),
        (&["run", "-f", "double", "--spin", "1s"], "too long a spin"),
        // A directory where the input file goes: named, before any worker starts.
        (
            &["run", "-f", "double", "-i", "."],
            "--input .: a directory, not a file of items",
        ),
        // A zero followed by garbage is garbage, not zero.
        (
            &["run", "-f", "double", "--spin", "0banana"],
            "unknown unit",
        ),
    ];
    for (args, needle) in cases {
        let out = expect_code(&mut coord(args), None, 2);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[test]
fn a_job_that_cannot_run_exits_3() {
    let dir = tempdir();
    let missing = dir.path().join("missing.txt");
    let out = expect_code(
        &mut coord(&["run", "--function", "double", "--input", path_str(&missing)]),
        None,
        3,
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.txt"));
    let out = expect_code(
        &mut coord(&[
            "run",
            "--function",
            "double",
            "--plugin",
            path_str(&missing),
        ]),
        Some(b"1\n"),
        3,
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("failed to start the workers"));
}

#[test]
fn stats_json_has_the_summary_figures() {
    let dir = tempdir();
    let stats = dir.path().join("stats.json");
    expect_code(
        &mut coord(&[
            "run",
            "--function",
            "double",
            "--format",
            "jsonl",
            "--stats-json",
            path_str(&stats),
        ]),
        Some(b"1\n2\nx\n"),
        1,
    );
    let stats: serde_json::Value = serde_json::from_slice(&read(&stats)).unwrap();
    assert_eq!(stats["items_ok"], 2, "{stats}");
    assert_eq!(stats["items_failed"], 1, "{stats}");
    assert_eq!(stats["exit_code"], 1, "{stats}");
}

// ---------------------------------------------------------------------------------
// Pipes, signals, resume.

#[test]
fn head_closes_the_pipe_and_the_job_ends_quietly() {
    let script = format!(
        "yes 7 | RUST_LOG=pstream_coordinator=debug '{}' run --function double \
         --format jsonl | head -n 5",
        bin().display()
    );
    let mut sh = Command::new("sh");
    sh.arg("-c").arg(&script);
    let mut child = sh
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child, &script);
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let explain = report(&script, status, stdout.as_bytes(), stderr.as_bytes());
    assert!(status.success(), "{explain}");
    assert_eq!(stdout, "14\n".repeat(5), "{explain}");
    let workers = workers_in_log(&stderr);
    assert!(!workers.is_empty(), "no worker in the log\n{explain}");
    // The launcher reaped its workers before it exited.
    for pid in workers {
        assert_eq!(process_state(pid), None, "worker {pid} left\n{explain}");
    }
    // Quietly: no summary, no error about the pipe.
    assert!(!stderr.contains("items in"), "{explain}");
    assert!(!stderr.to_lowercase().contains("broken pipe"), "{explain}");
}

/// `slow_double` over `1..=n`, with a line that is not a number every 997 lines: a
/// job that runs long enough to be interrupted.
fn slow_input(dir: &Path, n: u64) -> PathBuf {
    let mut text = String::new();
    for i in 1..=n {
        if i % 997 == 0 {
            text.push_str("not a number\n");
        } else {
            writeln!(text, "{i}").unwrap();
        }
    }
    let path = dir.join("input.jsonl");
    std::fs::write(&path, text).unwrap();
    path
}

fn slow_job<'a>(input: &'a Path, output: &'a Path, errors: &'a Path) -> Vec<&'a str> {
    vec![
        "run",
        "--function",
        "slow_double",
        "--format",
        "jsonl",
        "--workers",
        "2",
        "--input",
        path_str(input),
        "--output",
        path_str(output),
        "--errors",
        path_str(errors),
    ]
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[test]
fn sigkill_then_resume_equals_an_uninterrupted_run() {
    let dir = tempdir();
    let input = slow_input(dir.path(), scale(400_000));
    let (want_out, want_err) = (dir.path().join("want.out"), dir.path().join("want.err"));
    expect_code(&mut coord(&slow_job(&input, &want_out, &want_err)), None, 1);

    let (out, err) = (dir.path().join("got.out"), dir.path().join("got.err"));
    let journal = dir.path().join("got.out.pstream-resume");
    // Killed twice, at different points, then run to the end.
    for round in 0..2 {
        let mut args = slow_job(&input, &out, &err);
        if round > 0 {
            args.push("--resume");
        }
        let mut cmd = coord(&args);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = file_len(&out);
        wait_until("the output to grow", || file_len(&out) > start + 100_000);
        let workers = children(child.id());
        signal(&child, Signal::SIGKILL);
        child.wait().unwrap();
        // Workers die with the launcher, whatever killed it.
        wait_gone(&workers);
        assert!(
            journal.exists(),
            "round {round}: the job finished before it was killed; make it longer"
        );
    }
    let args = [slow_job(&input, &out, &err), vec!["--resume"]].concat();
    let done = expect_code(&mut coord(&args), None, 1);
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(stderr.contains("resumed after line"), "{stderr}");
    assert_same("resumed output", &read(&out), &read(&want_out));
    assert_same("resumed errors", &read(&err), &read(&want_err));
    assert!(!journal.exists(), "the journal outlived the finished job");
}

#[test]
fn sigint_writes_an_exact_prefix_and_the_summary() {
    let dir = tempdir();
    let input = slow_input(dir.path(), scale(400_000));
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut cmd = coord(&slow_job(&input, &out, &err));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = StderrLines::new(child.stderr.take().unwrap());
    wait_until("the first results", || file_len(&out) > 10_000);
    let workers = children(child.id());
    signal(&child, Signal::SIGINT);
    let status = wait_exit(&mut child, "pstream-coord after SIGINT");
    let stderr = stderr.rest().to_string();
    let got = read(&out);
    let explain = report(
        &describe(&cmd),
        status,
        &got[..got.len().min(200)],
        stderr.as_bytes(),
    );
    assert_eq!(shell_status(status), 130, "{explain}");
    assert!(stderr.contains("stopped early: SIGINT"), "{explain}");
    assert!(stderr.contains("items in"), "{explain}");
    // An exact prefix of the full ordered output, ending with a whole line.
    let text = std::fs::read_to_string(&input).unwrap();
    let want: String = text
        .lines()
        .filter_map(|l| l.parse::<i64>().ok())
        .map(|x| format!("{}\n", x * 2))
        .collect();
    assert!(!got.is_empty() && got.ends_with(b"\n"), "{explain}");
    assert!(
        got.len() < want.len(),
        "the job finished before SIGINT; make it longer"
    );
    assert_same("output after SIGINT", &got, &want.as_bytes()[..got.len()]);
    wait_gone(&workers);
}

/// After a second Ctrl-C, `--stats-json` still has the pool's figures: the
/// workers per host and the lost workers (they were written as `"hosts": {}` and
/// `"lost_workers": 0` whatever had happened).
#[test]
fn a_second_sigint_keeps_the_host_figures_in_stats_json() {
    let dir = tempdir();
    let input = dir.path().join("in.jsonl");
    let stats = dir.path().join("stats.json");
    let lines: String = (0..100)
        .map(|i| {
            let fault = if i == 50 { "hang" } else { "none" };
            format!("{{\"value\":{i},\"fault\":\"{fault}\"}}\n")
        })
        .collect();
    std::fs::write(&input, lines).unwrap();
    let mut cmd = coord(&["run", "--function", "misbehave", "--format", "jsonl"]);
    cmd.args(["--workers", "2", "--no-progress", "--input"])
        .arg(&input)
        .arg("--stats-json")
        .arg(&stats)
        .arg("--output")
        .arg(dir.path().join("out.txt"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stderr = StderrLines::new(child.stderr.take().unwrap());
    // Results before the hanging item are written while it hangs.
    wait_until("the first results", || {
        !read(&dir.path().join("out.txt")).is_empty()
    });
    signal(&child, Signal::SIGINT);
    assert!(stderr.wait_for("again to stop at once"), "{}", stderr.seen);
    signal(&child, Signal::SIGINT);
    let status = wait_exit(&mut child, "pstream-coord after two SIGINTs");
    let rest = stderr.rest().to_string();
    assert_eq!(shell_status(status), 130, "{rest}");
    let figures: serde_json::Value = serde_json::from_slice(&read(&stats)).unwrap();
    assert!(
        figures["hosts"]["local"]["workers"].as_u64() >= Some(2),
        "{figures}"
    );
    assert_eq!(figures["lost_workers"], 0, "{figures}");
}

#[test]
fn a_second_sigint_kills_the_workers_at_once() {
    // Two items hang forever (no --timeout): only a second Ctrl-C ends this job.
    let mut input = String::new();
    for i in 0..100 {
        let fault = if (10..12).contains(&i) {
            "hang"
        } else {
            "none"
        };
        writeln!(input, "{{\"value\":{i},\"fault\":\"{fault}\"}}").unwrap();
    }
    let mut cmd = coord(&[
        "run",
        "--function",
        "misbehave",
        "--format",
        "jsonl",
        "--workers",
        "2",
    ]);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, input.as_bytes()).unwrap();
    let stdout = child.stdout.take().unwrap();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let collector = {
        let got = std::sync::Arc::clone(&got);
        std::thread::spawn(move || {
            let mut stdout = stdout;
            let mut buf = [0u8; 256];
            while let Ok(n @ 1..) = stdout.read(&mut buf) {
                got.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let mut stderr = StderrLines::new(child.stderr.take().unwrap());
    // Results before the hanging items come out (the output is flushed while the
    // job waits); how many depends on how the items were batched.
    wait_until("the first results", || !got.lock().unwrap().is_empty());
    let workers = children(child.id());
    assert!(!workers.is_empty());
    signal(&child, Signal::SIGINT);
    assert!(
        stderr.wait_for("again to stop at once"),
        "no notice of the first SIGINT: {}",
        stderr.seen
    );
    signal(&child, Signal::SIGINT);
    let status = wait_exit(&mut child, "pstream-coord after two SIGINTs");
    drop(stdin);
    let rest = stderr.rest().to_string();
    assert_eq!(shell_status(status), 130, "{rest}");
    assert!(rest.contains("items in"), "no summary: {rest}");
    collector.join().unwrap();
    let got = String::from_utf8(got.lock().unwrap().clone()).unwrap();
    let all: String = (0..10).map(|i| format!("{i}\n")).collect();
    assert!(
        all.starts_with(&got),
        "not a prefix of the results: {got:?}"
    );
    wait_gone(&workers);
}

// ---------------------------------------------------------------------------------
// Memory and the progress display.

/// Peak RSS of the launcher doubling `seq 1 n` into /dev/null.
fn peak_rss_doubling(n: u64) -> u64 {
    let mut cmd = coord(&["run", "--function", "double", "--format", "jsonl"]);
    // A hang guard for 20M lines in a debug build on a busy machine.
    peak_rss_fed_numbers(&mut cmd, n, std::time::Duration::from_secs(900))
}

#[test]
fn memory_stays_flat_from_1m_to_20m_lines() {
    const MIB: u64 = 1 << 20;
    let small = peak_rss_doubling(scale(1_000_000));
    let large = peak_rss_doubling(scale(20_000_000));
    eprintln!(
        "peak RSS: {} KiB at 1M lines, {} KiB at 20M",
        small / 1024,
        large / 1024
    );
    assert!(
        large < 64 * MIB,
        "peak RSS {} MiB at 20M lines",
        large / MIB
    );
    assert!(
        large < small + 8 * MIB,
        "memory grows with the input: {} KiB at 1M lines, {} KiB at 20M",
        small / 1024,
        large / 1024
    );
}

/// Run a `slow_double` job with stderr on a new pseudo-terminal, and return what the
/// terminal showed.
fn run_on_a_terminal(args: &[&str]) -> String {
    let winsize = nix::pty::Winsize {
        ws_row: 40,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&winsize), None).expect("open a pseudo-terminal");
    let master: OwnedFd = pty.master;
    let mut cmd = coord(args);
    let what = describe(&cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(pty.slave));
    let mut child = cmd.spawn().unwrap();
    drop(cmd); // Our copy of the terminal's slave side: EOF comes when the child's closes.
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
    let status = wait_exit(&mut child, "pstream-coord on a terminal");
    let seen = String::from_utf8_lossy(&reader.join().unwrap()).into_owned();
    assert!(
        status.success(),
        "{}",
        report(&what, status, b"", seen.as_bytes())
    );
    seen
}

#[test]
fn the_progress_bar_shows_on_a_terminal_and_not_in_a_pipe() {
    let dir = tempdir();
    let input = dir.path().join("input.jsonl");
    std::fs::write(&input, seq(scale(200_000))).unwrap();
    let args = [
        "run",
        "--function",
        "slow_double",
        "--format",
        "jsonl",
        "--workers",
        "2",
        "--input",
        path_str(&input),
        "--output",
        "/dev/null",
    ];
    let shown = run_on_a_terminal(&args);
    assert!(
        shown.contains("in flight"),
        "no progress bar on the terminal:\n{shown}"
    );
    assert!(shown.contains("ETA"), "no ETA for a file input:\n{shown}");
    assert!(shown.contains("items in"), "no summary:\n{shown}");

    let out = expect_code(&mut coord(&args), None, 0);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("in flight"),
        "a progress bar in a pipe:\n{stderr}"
    );
    assert!(
        !stderr.contains('\r') && !stderr.contains('\x1b'),
        "{stderr:?}"
    );
    assert_eq!(
        stderr.lines().count(),
        1,
        "only the summary line:\n{stderr}"
    );
}

// ---------------------------------------------------------------------------------
// Limits: time and memory.

#[test]
fn a_hanging_item_times_out_and_the_rest_is_computed() {
    let dir = tempdir();
    let errors = dir.path().join("errors.jsonl");
    let input = "{\"value\":1}\n{\"value\":2,\"fault\":\"hang\"}\n{\"value\":3}\n";
    let out = expect_code(
        &mut coord(&[
            "run",
            "--function",
            "misbehave",
            "--format",
            "jsonl",
            "--timeout",
            "300ms",
            "--retries",
            "0",
            "--errors",
            path_str(&errors),
        ]),
        Some(input.as_bytes()),
        1,
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n3\n");
    let records = records(&errors);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["line"], 2);
    assert_eq!(records[0]["kind"], "timed_out");
}

#[test]
fn an_allocation_bomb_fails_in_its_worker_under_a_memory_limit() {
    let dir = tempdir();
    let errors = dir.path().join("errors.jsonl");
    let input = "{\"value\":1}\n{\"value\":2,\"fault\":\"oom\"}\n{\"value\":3}\n";
    let out = expect_code(
        &mut coord(&[
            "run",
            "--function",
            "misbehave",
            "--format",
            "jsonl",
            "--memory-limit",
            "512M",
            "--errors",
            path_str(&errors),
        ]),
        Some(input.as_bytes()),
        1,
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n3\n");
    let records = records(&errors);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["line"], 2);
    assert_eq!(records[0]["kind"], "crashed", "{records:?}");
}

#[test]
fn sigterm_lets_the_items_in_flight_finish_and_exits_143() {
    // The second item hangs until its time limit; SIGTERM comes while it does, and
    // the launcher waits for it (and what follows it in flight) before it exits.
    let mut cmd = coord(&[
        "run",
        "--function",
        "misbehave",
        "--format",
        "jsonl",
        "--timeout",
        "500ms",
        "--retries",
        "0",
    ]);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Stdin stays open: only the signal ends the input.
    let mut stdin = child.stdin.take().unwrap();
    std::io::Write::write_all(
        &mut stdin,
        b"{\"value\":1}\n{\"value\":2,\"fault\":\"hang\"}\n{\"value\":3}\n",
    )
    .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 2];
    stdout.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"1\n");
    let mut stderr = StderrLines::new(child.stderr.take().unwrap());
    signal(&child, Signal::SIGTERM);
    let status = wait_exit(&mut child, "pstream-coord after SIGTERM");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    drop(stdin);
    let stderr = stderr.rest().to_string();
    let explain = report(&describe(&cmd), status, rest.as_bytes(), stderr.as_bytes());
    assert_eq!(shell_status(status), 143, "{explain}");
    assert_eq!(rest, "3\n", "{explain}");
    assert!(stderr.contains("line 2: timed out"), "{explain}");
    assert!(stderr.contains("stopped early: SIGTERM"), "{explain}");
}

/// The progress line says what is in flight and how many workers crashed while
/// results stall, which is when one looks at it: 100 items on one worker, the
/// 20th crashes it, the 50th hangs (until its time limit, 30 s, which also bounds
/// the test). The figures used to be published by the result loop every 256
/// results only, so this job showed `0 in flight, ... 0 crashes` until its end.
#[test]
fn the_progress_line_shows_the_items_in_flight_and_the_crashes_while_results_stall() {
    let dir = tempdir();
    let input = dir.path().join("in.jsonl");
    let lines: String = (1..=100)
        .map(|i| match i {
            20 => format!("{{\"value\":{i},\"fault\":\"segv\"}}\n"),
            50 => format!("{{\"value\":{i},\"fault\":\"hang\"}}\n"),
            _ => format!("{{\"value\":{i}}}\n"),
        })
        .collect();
    std::fs::write(&input, lines).unwrap();
    let mut cmd = coord(&["run", "--function", "misbehave", "--format", "jsonl"]);
    cmd.args([
        "--workers",
        "1",
        "--retries",
        "0",
        "--timeout",
        "30s",
        "--progress",
    ])
    .arg("--input")
    .arg(&input)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stderr = StderrLines::new(child.stderr.take().unwrap());
    // The first progress line after the crash was reported, while the hang holds
    // the rest: every item read and not written is in flight (all 100 are read).
    let reported = stderr.wait_for("line 20: crashed its worker");
    let seen = reported && stderr.wait_for(" items done ");
    let _ = child.kill();
    let _ = child.wait();
    let text = stderr.rest().to_string();
    assert!(seen, "{text}");
    let after = &text[text.find("line 20: crashed").unwrap()..];
    let line = after.lines().find(|l| l.contains(" items done ")).unwrap();
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    // done, total, rate, in flight, failed, crashes
    let [done, 100, _, in_flight, failed, crashes] = numbers[..] else {
        panic!("{line}")
    };
    assert!(done < 50, "{line}");
    assert_eq!(in_flight, 100 - done, "{line}");
    assert_eq!(failed, 1, "{line}");
    assert!(crashes >= 1, "{line}");
}

// ---------------------------------------------------------------------------------
// Inputs that can be read only once: every line comes back exactly once, in order,
// with the progress display forced on (it counts a file's lines for its total, and
// must not take them from a pipe to do so).

/// `double` over the lines of `input` (a path), with progress lines forced on.
fn progress_job(input: &str) -> Command {
    coord(&[
        "run",
        "--function",
        "double",
        "--format",
        "jsonl",
        "--workers",
        "2",
        "--input",
        input,
        "--progress",
    ])
}

fn doubled(n: u64) -> Vec<u8> {
    (1..=n)
        .map(|i| format!("{}\n", i * 2))
        .collect::<String>()
        .into_bytes()
}

#[test]
fn a_pipe_on_stdin_with_progress_loses_nothing() {
    let n = scale(300_000);
    for input in ["/dev/stdin", "-"] {
        let mut cmd = progress_job(input);
        let out = expect_code(&mut cmd, Some(&seq(n)), 0);
        assert_same(
            &format!("--input {input} from a pipe"),
            &out.stdout,
            &doubled(n),
        );
    }
}

#[test]
fn a_fifo_with_progress_loses_nothing() {
    let n = scale(300_000);
    let dir = tempdir();
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let writer = {
        let fifo = fifo.clone();
        let data = seq(n);
        // Blocks in open() until the launcher opens the FIFO for reading.
        std::thread::spawn(move || {
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .open(&fifo)
                .and_then(|mut f| std::io::Write::write_all(&mut f, &data));
        })
    };
    let mut cmd = progress_job(path_str(&fifo));
    cmd.stdin(Stdio::null());
    let out = output_of(&mut cmd);
    // If the launcher never opened the FIFO, release the writer (it then fails
    // with EPIPE once this reader is closed).
    {
        use std::os::unix::fs::OpenOptionsExt;
        let _unblock = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(&fifo);
    }
    writer.join().unwrap();
    check_code(&cmd, &out, 0);
    assert_same("--input FIFO", &out.stdout, &doubled(n));
}

#[test]
fn process_substitution_with_progress_loses_nothing() {
    // `-i <(seq 1 N)`: the input is /dev/fd/N, a pipe. `exec`: the shell becomes
    // the launcher, so the hang guard kills the right process.
    let n = scale(300_000);
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(format!(
            "exec \"$0\" run --function double --format jsonl --workers 2 \
             --input <(seq 1 {n}) --progress"
        ))
        .arg(bin())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    let out = output_of(&mut cmd);
    check_code(&cmd, &out, 0);
    assert_same("--input <(seq)", &out.stdout, &doubled(n));
}

#[test]
fn a_file_with_progress_is_counted_and_read_once() {
    // A regular file, also behind stdin: the progress lines give the total, and the
    // output is whole.
    let n = scale(300_000);
    let dir = tempdir();
    let input = dir.path().join("input.txt");
    std::fs::write(&input, seq(n)).unwrap();
    for stdin in [false, true] {
        let mut cmd = if stdin {
            let mut cmd = progress_job("-");
            cmd.stdin(std::fs::File::open(&input).unwrap());
            cmd
        } else {
            let mut cmd = progress_job(path_str(&input));
            cmd.stdin(Stdio::null());
            cmd
        };
        let out = output_of(&mut cmd);
        check_code(&cmd, &out, 0);
        assert_same("--input FILE", &out.stdout, &doubled(n));
    }
}

// ---------------------------------------------------------------------------------
// File arguments that name the same file are refused before anything is written.

/// A directory with an input file (`in.txt`, 3 lines) and an output file
/// (`out.txt`, an earlier result) to check that nothing was touched.
fn files_to_protect() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempdir();
    let input = dir.path().join("in.txt");
    let output = dir.path().join("out.txt");
    std::fs::write(&input, "1\n2\n3\n").unwrap();
    std::fs::write(&output, "earlier results\n").unwrap();
    (dir, input, output)
}

fn assert_untouched(input: &Path, output: &Path) {
    assert_eq!(read(input), b"1\n2\n3\n", "the input was changed");
    assert_eq!(read(output), b"earlier results\n", "the output was changed");
}

#[test]
fn an_output_that_is_the_input_is_refused() {
    let (dir, input, output) = files_to_protect();
    let d = dir.path();
    std::fs::hard_link(&input, d.join("link.txt")).unwrap();
    std::os::unix::fs::symlink(&input, d.join("symlink.txt")).unwrap();
    let relative = format!("./{}", input.file_name().unwrap().to_str().unwrap());
    // (arguments after -f double --format jsonl, the options named in the message)
    let cases: Vec<(Vec<String>, [&str; 2])> = vec![
        (
            vec!["-i".into(), "in.txt".into(), "-o".into(), "in.txt".into()],
            ["--output in.txt", "--input in.txt"],
        ),
        (
            vec![
                "-i".into(),
                relative.clone(),
                "-o".into(),
                path_str(&input).into(),
            ],
            ["--output", "--input ./in.txt"],
        ),
        (
            vec!["-i".into(), "in.txt".into(), "-o".into(), "link.txt".into()],
            ["--output link.txt", "--input"],
        ),
        (
            vec![
                "-i".into(),
                "in.txt".into(),
                "-o".into(),
                "symlink.txt".into(),
            ],
            ["--output symlink.txt", "--input"],
        ),
        (
            vec![
                "-i".into(),
                "in.txt".into(),
                "--errors".into(),
                "in.txt".into(),
            ],
            ["--errors in.txt", "--input"],
        ),
        (
            vec![
                "-i".into(),
                "in.txt".into(),
                "--stats-json".into(),
                "in.txt".into(),
            ],
            ["--stats-json in.txt", "--input"],
        ),
        (
            vec![
                "-i".into(),
                "in.txt".into(),
                "-o".into(),
                "out.txt".into(),
                "--errors".into(),
                "./out.txt".into(),
            ],
            ["--errors ./out.txt", "--output out.txt"],
        ),
        // The journal of -o is the input, or the errors file.
        (
            vec![
                "-i".into(),
                "out.txt.pstream-resume".into(),
                "-o".into(),
                "out.txt".into(),
            ],
            ["resume journal", "--input out.txt.pstream-resume"],
        ),
    ];
    std::fs::write(d.join("out.txt.pstream-resume"), "1\n2\n3\n").unwrap();
    for (args, [first, second]) in cases {
        let mut cmd = coord(&["run", "-f", "double", "--format", "jsonl"]);
        cmd.args(&args).current_dir(d);
        let out = expect_code(&mut cmd, Some(b"4\n"), 2);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(first) && stderr.contains(second) && stderr.contains("same file"),
            "{args:?}: the message must name both arguments:\n{stderr}"
        );
        assert_untouched(&input, &output);
        assert_eq!(read(&d.join("out.txt.pstream-resume")), b"1\n2\n3\n");
    }
}

/// The token file and the hosts file are read by the job, as the input is: an
/// output, errors or statistics file that is one of them is refused before
/// anything is written. (The token was made or read, then the output written over
/// it: the workers that join later with that file, and every copy made from it,
/// failed with `a wrong token`; a hosts file was lost the same way.)
#[test]
fn an_output_that_is_the_token_file_or_the_hosts_file_is_refused() {
    let (dir, input, output) = files_to_protect();
    let d = dir.path();
    let token = d.join("job.token");
    pstream::protocol::auth::create_token_file(&token).unwrap();
    let secret = read(&token);
    std::fs::write(d.join("hosts.txt"), "node1\n").unwrap();
    let listen = ["--listen", "127.0.0.1:0", "--workers", "1"];
    let cases: Vec<(Vec<&str>, [&str; 2])> = vec![
        (
            [
                &listen[..],
                &["--token-file", "job.token", "-o", "job.token"],
            ]
            .concat(),
            ["--output job.token", "--token-file job.token"],
        ),
        (
            [
                &listen[..],
                &["--token-file", "job.token", "--errors", "./job.token"],
            ]
            .concat(),
            ["--errors ./job.token", "--token-file job.token"],
        ),
        (
            [
                &listen[..],
                &["--token-file", "job.token", "--stats-json", "job.token"],
            ]
            .concat(),
            ["--stats-json job.token", "--token-file job.token"],
        ),
        // A token file that does not exist yet is made by the job: the same.
        (
            [
                &listen[..],
                &["--token-file", "new.token", "-o", "new.token"],
            ]
            .concat(),
            ["--output new.token", "--token-file new.token"],
        ),
        (
            vec!["--ssh-hosts", "hosts.txt", "-o", "hosts.txt"],
            ["--output hosts.txt", "--ssh-hosts hosts.txt"],
        ),
    ];
    for (args, [first, second]) in cases {
        let mut cmd = coord(&["run", "-f", "double", "--no-progress", "-i", "in.txt"]);
        cmd.args(&args).current_dir(d);
        let out = expect_code(&mut cmd, None, 2);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(first) && stderr.contains(second) && stderr.contains("same file"),
            "{args:?}: the message must name both arguments:\n{stderr}"
        );
        assert_eq!(read(&token), secret, "{args:?}: the token file was changed");
        assert!(!d.join("new.token").exists(), "{args:?}: {stderr}");
        assert_eq!(read(&d.join("hosts.txt")), b"node1\n", "{args:?}");
        assert_untouched(&input, &output);
    }
}

#[test]
fn errors_and_output_that_do_not_exist_yet_are_compared_by_place() {
    let dir = tempdir();
    let d = dir.path();
    std::fs::create_dir(d.join("sub")).unwrap();
    let mut cmd = coord(&[
        "run",
        "-f",
        "double",
        "--format",
        "jsonl",
        "-o",
        "sub/new.txt",
    ]);
    cmd.args(["--errors", "sub/../sub/new.txt"]).current_dir(d);
    let out = expect_code(&mut cmd, Some(b"1\nx\n"), 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--errors sub/../sub/new.txt") && stderr.contains("--output sub/new.txt"),
        "{stderr}"
    );
    assert!(
        !d.join("sub/new.txt").exists(),
        "a refused run created its output"
    );
}

#[test]
fn stdout_redirected_to_the_input_is_refused() {
    let (_dir, input, output) = files_to_protect();
    let mut cmd = coord(&[
        "run",
        "-f",
        "double",
        "--format",
        "jsonl",
        "-i",
        path_str(&input),
    ]);
    let append = std::fs::OpenOptions::new()
        .append(true)
        .open(&input)
        .unwrap();
    cmd.stdin(Stdio::null())
        .stdout(append)
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stderr = StderrLines::new(child.stderr.take().unwrap());
    let status = wait_exit(&mut child, &describe(&cmd));
    let stderr = stderr.rest().to_string();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("the output (stdout)") && stderr.contains("--input"),
        "{stderr}"
    );
    assert_untouched(&input, &output);
}

#[test]
fn an_errors_file_that_cannot_be_opened_leaves_the_output_alone() {
    let (dir, input, output) = files_to_protect();
    let errors = dir.path().join("a-directory");
    std::fs::create_dir(&errors).unwrap();
    let out = expect_code(
        &mut coord(&[
            "run",
            "-f",
            "double",
            "--format",
            "jsonl",
            "-i",
            path_str(&input),
            "-o",
            path_str(&output),
            "--errors",
            path_str(&errors),
        ]),
        None,
        3,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("errors file") && stderr.contains("a-directory"),
        "{stderr}"
    );
    assert_untouched(&input, &output);
}

#[test]
fn dev_null_may_be_named_for_every_file() {
    let out = expect_code(
        &mut coord(&[
            "run",
            "-f",
            "double",
            "--format",
            "jsonl",
            "-i",
            "/dev/null",
            "-o",
            "/dev/null",
            "--errors",
            "/dev/null",
            "--stats-json",
            "/dev/null",
        ]),
        None,
        0,
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("0 items"));
}

// ---------------------------------------------------------------------------------
// Closed standard streams, faithful error records, the frame limit.

/// `cmd` with descriptor `fd` closed in the child, as `<&-` or `>&-` do.
fn with_closed(cmd: &mut Command, fd: i32) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls
    // close(2), which is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            nix::libc::close(fd);
            Ok(())
        });
    }
}

#[test]
fn a_closed_stdin_or_stdout_is_an_error_not_an_empty_job() {
    let dir = tempdir();
    let output = dir.path().join("out.txt");
    // Closed stdin, output to a file: nothing to read is not "0 items, exit 0".
    let mut cmd = coord(&["run", "-f", "double", "-o", path_str(&output)]);
    cmd.stdin(Stdio::null());
    with_closed(&mut cmd, 0);
    let out = output_of(&mut cmd);
    check_code(&cmd, &out, 3);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("stdin") && stderr.contains("closed"),
        "{stderr}"
    );
    assert!(!output.exists(), "the output was created");

    // Closed stdout: results written nowhere are not a success.
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "1\n2\n").unwrap();
    let mut cmd = coord(&["run", "-f", "double", "-i", path_str(&input)]);
    cmd.stdin(Stdio::null()).stderr(Stdio::piped());
    with_closed(&mut cmd, 1);
    let mut child = cmd.spawn().unwrap();
    let mut stderr = StderrLines::new(child.stderr.take().unwrap());
    let status = wait_exit(&mut child, &describe(&cmd));
    let stderr = stderr.rest().to_string();
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("stdout") && stderr.contains("closed"),
        "{stderr}"
    );

    // /dev/null is not a closed stream.
    let mut cmd = coord(&["run", "-f", "upper", "-i", path_str(&input)]);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    assert_eq!(wait_exit(&mut child, &describe(&cmd)).code(), Some(0));
}

#[test]
fn an_error_record_carries_a_non_utf8_line_exactly() {
    let dir = tempdir();
    let errors = dir.path().join("errors.jsonl");
    let bad: &[u8] = b"\xff\xfe7\x80";
    let mut input = b"1\n\"\xc3\xa9t\xc3\xa9\"\n".to_vec();
    input.extend_from_slice(bad);
    input.extend_from_slice(b"\n2\n");
    let out = expect_code(
        &mut coord(&[
            "run",
            "-f",
            "double",
            "--format",
            "jsonl",
            "--errors",
            path_str(&errors),
        ]),
        Some(&input),
        1,
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2\n4\n");
    let records = records(&errors);
    assert_eq!(records.len(), 2, "{records:?}");
    // A UTF-8 line: its text, and no bytes field.
    assert_eq!(records[0]["input"], "\"été\"");
    assert!(records[0].get("input_base64").is_none(), "{records:?}");
    // Not UTF-8: the bytes, exactly, in base64 (checked with coreutils).
    assert_eq!(records[1]["line"], 3);
    let encoded = records[1]["input_base64"].as_str().expect("input_base64");
    let mut cmd = Command::new("base64");
    cmd.arg("-d");
    let decoded = expect_code(&mut cmd, Some(encoded.as_bytes()), 0).stdout;
    assert_eq!(decoded, bad);
}

#[test]
fn max_frame_bounds_an_item_and_the_hint_names_it() {
    let dir = tempdir();
    let input = dir.path().join("long.txt");
    let line = "a".repeat(30_000);
    std::fs::write(&input, format!("short\n{line}\n")).unwrap();
    let run = |frame: &str, code| {
        expect_code(
            &mut coord(&[
                "run",
                "-f",
                "upper",
                "-i",
                path_str(&input),
                "--max-frame",
                frame,
            ]),
            None,
            code,
        )
    };
    let out = run("16K", 1);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "SHORT\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 2: too large") && stderr.contains("--max-frame"),
        "{stderr}"
    );
    let out = run("1M", 0);
    assert_eq!(
        out.stdout,
        format!("SHORT\n{}\n", line.to_uppercase()).into_bytes()
    );
    let out = run("1K", 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("frame limit"));
}

// ---------------------------------------------------------------------------------
// A full disk, a torn last line: the output holds whole lines only, and --resume
// completes it.

/// `cmd` run with a file size limit of `bytes` (RLIMIT_FSIZE) and SIGXFSZ ignored:
/// a write past the limit fails with EFBIG, as a write to a full disk fails with
/// ENOSPC, without touching the machine's disks or settings.
fn with_file_size_limit(cmd: &mut Command, bytes: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls
    // signal(2) and setrlimit(2), both async-signal-safe, with values on its stack.
    unsafe {
        cmd.pre_exec(move || {
            nix::libc::signal(nix::libc::SIGXFSZ, nix::libc::SIG_IGN);
            let limit = nix::libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if nix::libc::setrlimit(nix::libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[test]
fn a_full_disk_leaves_whole_lines_and_resume_completes_the_output() {
    let n = scale(200_000).max(100_000);
    let dir = tempdir();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, seq(n)).unwrap();
    let want = doubled(n);
    // The "disk" fills three bytes into a line.
    let limit = want[300_000..].iter().position(|&b| b == b'\n').unwrap() + 300_000 + 4;
    assert_ne!(want[limit - 1], b'\n');
    let output = dir.path().join("out.txt");
    let journal = dir.path().join("out.txt.pstream-resume");
    let args = [
        "run",
        "-f",
        "double",
        "--format",
        "jsonl",
        "-j",
        "2",
        "-i",
        path_str(&input),
        "-o",
        path_str(&output),
    ];
    let mut cmd = coord(&args);
    cmd.stdin(Stdio::null());
    with_file_size_limit(&mut cmd, limit as u64);
    let out = output_of(&mut cmd);
    check_code(&cmd, &out, 3);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("failed to write the output"), "{stderr}");
    let got = read(&output);
    assert!(!got.is_empty() && got.len() < limit, "{} bytes", got.len());
    assert!(
        got.ends_with(b"\n"),
        "the output ends inside a line: ...{:?}",
        String::from_utf8_lossy(&got[got.len().saturating_sub(20)..])
    );
    assert_same("output on a full disk", &got, &want[..got.len()]);
    // The journal vouches for whole lines written before the failed write.
    let record: serde_json::Value = serde_json::from_slice(&read(&journal)).unwrap();
    let vouched = record["output_bytes"].as_u64().unwrap();
    assert!(
        record["lines"].as_u64().unwrap() > 0 && vouched <= got.len() as u64,
        "{record}"
    );
    assert_eq!(want[vouched as usize - 1], b'\n', "{record}");

    // Room again: --resume continues from the whole lines the journal vouches for.
    let mut cmd = coord(&[&args[..], &["--resume"]].concat());
    let done = expect_code(&mut cmd, None, 0);
    assert!(String::from_utf8_lossy(&done.stderr).contains("resumed after line"));
    assert_same("resumed output", &read(&output), &want);
    assert!(!journal.exists());
}

#[test]
fn resume_cuts_off_a_torn_last_line() {
    // A SIGKILL can cut the last write short inside a line (the kernel stops a
    // write between pages for a fatal signal); this test makes the torn line
    // itself, after a real SIGKILL, and --resume must cut it off.
    let dir = tempdir();
    let input = slow_input(dir.path(), scale(200_000));
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut cmd = coord(&slow_job(&input, &out, &err));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the output to grow", || file_len(&out) > 50_000);
    let workers = children(child.id());
    signal(&child, Signal::SIGKILL);
    child.wait().unwrap();
    wait_gone(&workers);
    assert!(
        dir.path().join("out.pstream-resume").exists(),
        "the job finished before it was killed; make it longer"
    );
    for file in [&out, &err] {
        let mut f = std::fs::OpenOptions::new().append(true).open(file).unwrap();
        std::io::Write::write_all(&mut f, b"{\"torn").unwrap();
    }
    let done = expect_code(
        &mut coord(&[slow_job(&input, &out, &err), vec!["--resume"]].concat()),
        None,
        1,
    );
    assert!(String::from_utf8_lossy(&done.stderr).contains("resumed after line"));
    let text = std::fs::read_to_string(&input).unwrap();
    let want: String = text
        .lines()
        .filter_map(|l| l.parse::<i64>().ok())
        .map(|x| format!("{}\n", x * 2))
        .collect();
    assert_same("resumed output", &read(&out), want.as_bytes());
    let records = records(&err);
    let lines: Vec<u64> = records
        .iter()
        .map(|r| r["line"].as_u64().unwrap())
        .collect();
    let want_lines: Vec<u64> = (1..=scale(200_000)).filter(|i| i % 997 == 0).collect();
    assert_eq!(lines, want_lines);
}

// ---------------------------------------------------------------------------------
// The socket's directory: never where another user could swap it.

#[test]
fn a_tmpdir_other_users_could_rename_things_in_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir();
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    let entries = |p: &Path| std::fs::read_dir(p).unwrap().count();

    // World-writable without the sticky bit: anybody may rename the pool's
    // directory aside and put a socket of theirs in its place.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut cmd = coord(&["run", "-f", "double", "--format", "jsonl", "-j", "1"]);
    cmd.env("TMPDIR", &open);
    let out = expect_code(&mut cmd, Some(b"1\n"), 3);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(path_str(&open)), "{stderr}");
    assert!(stderr.contains("without the sticky bit"), "{stderr}");
    assert!(stderr.contains("TMPDIR"), "{stderr}");
    assert!(out.stdout.is_empty(), "{stderr}");
    assert_eq!(entries(&open), 0, "nothing is made in a refused TMPDIR");

    // The same with the sticky bit, as /tmp: fine.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let mut cmd = coord(&["run", "-f", "double", "--format", "jsonl", "-j", "1"]);
    cmd.env("TMPDIR", &open);
    let out = expect_code(&mut cmd, Some(b"1\n"), 0);
    assert_eq!(out.stdout, b"2\n");
    assert_eq!(entries(&open), 0, "the pool's directory is removed");

    // A directory below an unsafe one is no safer: the parent's entry can be swapped.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let below = open.join("mine");
    std::fs::create_dir(&below).unwrap();
    std::fs::set_permissions(&below, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut cmd = coord(&["run", "-f", "double", "--format", "jsonl", "-j", "1"]);
    cmd.env("TMPDIR", &below);
    let out = expect_code(&mut cmd, Some(b"1\n"), 3);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("without the sticky bit"), "{stderr}");

    // Another user's directory (only root can make one to try).
    if nix::unistd::geteuid().is_root() {
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o755)).unwrap();
        nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let mut cmd = coord(&["run", "-f", "double", "--format", "jsonl", "-j", "1"]);
        cmd.env("TMPDIR", &theirs);
        let out = expect_code(&mut cmd, Some(b"1\n"), 3);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("belongs to uid 65534"), "{stderr}");
    } else {
        eprintln!("not root: the case of another user's TMPDIR is not tried");
    }
}

// ---------------------------------------------------------------------------------
// Resume against a changed input: the journal fingerprints what was read.

/// Start the slow job over `input` and SIGKILL it once it has written some output;
/// the journal is left behind.
fn kill_a_slow_job(input: &Path, out: &Path, err: &Path) {
    // The output of an earlier run would look like progress before this one starts.
    let _ = std::fs::remove_file(out);
    let mut cmd = coord(&slow_job(input, out, err));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the output to grow", || file_len(out) > 30_000);
    let workers = children(child.id());
    signal(&child, Signal::SIGKILL);
    child.wait().unwrap();
    wait_gone(&workers);
    let mut journal = out.as_os_str().to_owned();
    journal.push(".pstream-resume");
    assert!(
        Path::new(&journal).exists(),
        "the job finished before it was killed; make it longer"
    );
}

#[test]
fn resume_refuses_an_input_that_changed() {
    let n = scale(200_000);
    for change in ["prepend", "truncate", "edit line 5"] {
        let dir = tempdir();
        let input = slow_input(dir.path(), n);
        let (out, err) = (dir.path().join("out"), dir.path().join("err"));
        kill_a_slow_job(&input, &out, &err);
        let original = std::fs::read_to_string(&input).unwrap();
        let changed = match change {
            "prepend" => "-1\n".repeat(1000) + &original,
            "truncate" => original
                .lines()
                .take(100)
                .map(|l| format!("{l}\n"))
                .collect(),
            _ => original.replacen("5\n", "55\n", 1),
        };
        std::fs::write(&input, &changed).unwrap();
        let (out_before, err_before) = (read(&out), read(&err));
        let args = [slow_job(&input, &out, &err), vec!["--resume"]].concat();
        let done = expect_code(&mut coord(&args), None, 2);
        let stderr = String::from_utf8_lossy(&done.stderr);
        let want = match change {
            "prepend" => "line 1 differs",
            "truncate" => "100 lines, fewer than the",
            _ => "between lines 5 and 8",
        };
        assert!(
            stderr.contains("input is not the one the interrupted run read")
                && stderr.contains(want),
            "{change}: {stderr}"
        );
        assert_eq!(read(&out), out_before, "{change}: the output was touched");
        assert_eq!(
            read(&err),
            err_before,
            "{change}: the errors file was touched"
        );
    }
}

#[test]
fn resume_with_the_input_named_another_way_completes_the_output() {
    let n = scale(200_000);
    let dir = tempdir();
    let input = slow_input(dir.path(), n);
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    kill_a_slow_job(&input, &out, &err);
    // Relative paths from the directory, where the first run had absolute ones.
    let rel = |p: &Path| p.file_name().unwrap().to_str().unwrap().to_string();
    let mut cmd = coord(&[
        "run",
        "--function",
        "slow_double",
        "--format",
        "jsonl",
        "--workers",
        "2",
        "--input",
        &format!("./{}", rel(&input)),
        "--output",
        &rel(&out),
        "--errors",
        &rel(&err),
        "--resume",
    ]);
    cmd.current_dir(dir.path());
    let done = expect_code(&mut cmd, None, 1);
    assert!(String::from_utf8_lossy(&done.stderr).contains("resumed after line"));
    let text = std::fs::read_to_string(&input).unwrap();
    let want: String = text
        .lines()
        .filter_map(|l| l.parse::<i64>().ok())
        .map(|x| format!("{}\n", x * 2))
        .collect();
    assert_same("resumed output", &read(&out), want.as_bytes());
    let lines: Vec<u64> = records(&err)
        .iter()
        .map(|r| r["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, (1..=n).filter(|i| i % 997 == 0).collect::<Vec<_>>());

    // The same data on stdin resumes too (after another kill).
    kill_a_slow_job(&input, &out, &err);
    let mut args = slow_job(&input, &out, &err);
    args[8] = "-";
    args.push("--resume");
    let done = expect_code(&mut coord(&args), Some(text.as_bytes()), 1);
    assert!(String::from_utf8_lossy(&done.stderr).contains("resumed after line"));
    assert_same("resumed from stdin", &read(&out), want.as_bytes());
}

#[test]
fn a_stray_worker_variable_does_not_make_the_launcher_a_worker() {
    // Left set in a shell (or copied from a worker's environment): without the
    // token's pipe that only a coordinator passes, it names no coordinator.
    let dir = tempdir();
    let socket = dir.path().join("socket");
    for fd in [None, Some("999"), Some("1")] {
        let mut cmd = coord(&["run", "-f", "double", "--format", "jsonl", "-j", "2"]);
        cmd.env("PSTREAM_SOCKET", &socket)
            .env("PSTREAM_TOKEN", "feedface".repeat(8))
            .env("PSTREAM_COORDINATOR_PID", "1");
        if let Some(fd) = fd {
            cmd.env("PSTREAM_TOKEN_FD", fd);
        }
        let out = expect_code(&mut cmd, Some(b"1\n2\n3\n"), 0);
        assert_eq!(out.stdout, b"2\n4\n6\n", "{fd:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("warning: ignoring the worker environment: PSTREAM_SOCKET="),
            "{fd:?}: {stderr}"
        );
        assert!(stderr.contains("3 ok, 0 failed"), "{fd:?}: {stderr}");
    }
}

/// A plugin that does not exist: the message names it and the system's reason,
/// once (the pool error carries its cause, and the launcher does not repeat it).
#[test]
fn a_missing_plugin_is_named_with_its_cause_once() {
    let mut cmd = coord(&["run", "-f", "double", "--plugin", "/nonexistent"]);
    let out = run(&mut cmd, Some(b"1\n"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr
            .contains("start worker program /nonexistent: No such file or directory (os error 2)"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );
}
