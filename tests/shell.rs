//! End-to-end tests of `pstream-coord exec` and `pstream-coord pipe`: the built
//! binary against the tools their users know (`xargs`, `awk`, GNU parallel's
//! job log), over real files, real commands, real signals.

#[path = "support/cli.rs"]
#[allow(dead_code)]
mod util;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use util::*;

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("create a temporary directory")
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

fn seq(n: u64) -> Vec<u8> {
    expect_code(Command::new("seq").arg("1").arg(n.to_string()), None, 0).stdout
}

fn sh(script: &str, input: Option<&[u8]>) -> Vec<u8> {
    expect_code(Command::new("sh").arg("-c").arg(script), input, 0).stdout
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

fn records(path: &Path) -> Vec<serde_json::Value> {
    String::from_utf8(read(path))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad record {l}: {e}")))
        .collect()
}

/// A number no other process on the machine has in its command line: to find the
/// commands a test started.
fn unique_number() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{}{:09}", 7000 + std::process::id() % 1000, nanos)
}

/// The pids of the processes with `arg` as one of their arguments.
fn processes_with_arg(arg: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        // A zombie has an empty command line: it is dead.
        if cmdline.split(|&b| b == 0).any(|a| a == arg.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

/// Wait until no live process has `arg` in its command line.
fn wait_none_with_arg(arg: &str) {
    wait_until(&format!("every process with argument {arg} to die"), || {
        processes_with_arg(arg)
            .into_iter()
            .all(|pid| matches!(process_state(pid), None | Some('Z')))
    });
}

// ---------------------------------------------------------------------------------
// exec

/// Files whose names hold spaces, quotes, newlines, backslashes, UTF-8 and bytes
/// that are not UTF-8; the list NUL-separated, in creation order.
fn awkward_files(dir: &Path) -> Vec<u8> {
    let mut names: Vec<Vec<u8>> = vec![
        b"plain".to_vec(),
        b"with space".to_vec(),
        b"it's \"quoted\"".to_vec(),
        b"new\nline".to_vec(),
        b"back\\slash".to_vec(),
        "ünïcødé ✓".as_bytes().to_vec(),
        b"latin1 \xe9t\xe9".to_vec(),
        b"\xff\xfe invalid".to_vec(),
        b"-starts-with-dash".to_vec(),
        b"{}".to_vec(),
        b"$(echo no) `no` *".to_vec(),
    ];
    for i in 0..200 {
        names.push(format!("file {i:03}.txt").into_bytes());
    }
    let mut list = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let path = dir.join(OsStr::from_bytes(name));
        std::fs::write(&path, format!("contents of file {i}\n").repeat(i + 1)).unwrap();
        list.extend_from_slice(path.as_os_str().as_bytes());
        list.push(0);
    }
    list
}

#[test]
fn exec_sha256sum_equals_xargs_over_awkward_names() {
    let dir = tempdir();
    let list = awkward_files(dir.path());
    let want = expect_code(
        Command::new("xargs").args(["-0", "sha256sum"]),
        Some(&list),
        0,
    )
    .stdout;
    let got = expect_code(
        &mut coord(&["exec", "-0", "--workers", "3", "--", "sha256sum", "{}"]),
        Some(&list),
        0,
    );
    assert_same("exec -0 sha256sum {}", &got.stdout, &want);
    // Without {}: the item is the last argument.
    let got = expect_code(
        &mut coord(&["exec", "-0", "-j", "2", "--unordered", "sha256sum"]),
        Some(&list),
        0,
    );
    let sorted = |b: &[u8]| {
        let mut lines: Vec<&[u8]> = b.split(|&c| c == b'\n').collect();
        lines.sort();
        lines.concat()
    };
    assert_same(
        "unordered, item appended",
        &sorted(&got.stdout),
        &sorted(&want),
    );
}

#[test]
fn run_reads_nul_separated_items_too() {
    let got = expect_code(
        &mut coord(&["run", "-0", "-f", "upper"]),
        Some(b"a\nb\0c d\0e"),
        0,
    );
    // A string result holding a newline is written as a JSON string.
    assert_same("run -0", &got.stdout, b"\"A\\nB\"\nC D\nE\n");
}

#[test]
fn exec_failures_are_reported_with_their_code_and_the_rest_is_written() {
    let dir = tempdir();
    let errors = dir.path().join("errors.jsonl");
    let input = seq(100);
    let out = expect_code(
        &mut coord(&[
            "exec",
            "-j",
            "3",
            "--errors",
            path_str(&errors),
            "--",
            "sh",
            "-c",
            "test $1 != 7 && test $1 != 42 || { echo \"no luck with $1\" >&2; exit 3; }; echo ok $1",
            "_",
            "{}",
        ]),
        Some(&input),
        1,
    );
    let want: String = (1..=100)
        .filter(|n| *n != 7 && *n != 42)
        .map(|n| format!("ok {n}\n"))
        .collect();
    assert_same("the other items' output", &out.stdout, want.as_bytes());
    let records = records(&errors);
    assert_eq!(records.len(), 2, "{records:?}");
    for (record, line) in records.iter().zip([7, 42]) {
        assert_eq!(record["line"], line);
        assert_eq!(record["input"], line.to_string());
        assert_eq!(record["kind"], "failed");
        assert_eq!(
            record["error"],
            format!("exit code 3; stderr: no luck with {line}")
        );
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("pstream-coord: line 7: exit code 3; stderr: no luck with 7"),
        "{stderr}"
    );
    // The command's own stderr passes through, whole.
    assert!(stderr.contains("no luck with 42\n"), "{stderr}");
}

#[test]
fn exec_a_command_killed_by_a_signal_is_named_and_leaves_nothing_running() {
    let dir = tempdir();
    let errors = dir.path().join("errors.jsonl");
    let marker = unique_number();
    // The item's shell leaves a sleep in the background, then dies of a signal:
    // the sleep is in its process group, and must not outlive the item.
    let script = format!("if [ $1 = 2 ]; then sleep {marker} & kill -KILL $$; fi; echo $1");
    let out = expect_code(
        &mut coord(&[
            "exec",
            "--errors",
            path_str(&errors),
            "--",
            "sh",
            "-c",
            &script,
            "_",
        ]),
        Some(b"1\n2\n3\n"),
        1,
    );
    assert_same("output", &out.stdout, b"1\n3\n");
    let records = records(&errors);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["line"], 2);
    assert_eq!(records[0]["error"], "killed by signal 9 (SIGKILL)");
    // Nothing of the command is left running.
    wait_none_with_arg(&marker);
}

#[test]
fn exec_a_command_that_cannot_start_is_an_item_failure() {
    let out = expect_code(
        &mut coord(&["exec", "--", "/nonexistent/command", "{}"]),
        Some(b"x\n"),
        1,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 1: could not run /nonexistent/command: No such file"),
        "{stderr}"
    );
}

/// How a command starts (the worker spawns it itself, without `std`): nothing
/// blocked, SIGPIPE at its default (the workers ignore it), its own process group,
/// argv[0] as written though the program was found in PATH once for all items, a
/// script without `#!` run by /bin/sh as `execvp` does, and a NUL byte in an
/// argument an item failure.
#[test]
fn exec_commands_start_as_from_a_shell() {
    let dir = tempdir();
    let out = expect_code(
        &mut coord(&[
            "exec",
            "--",
            "sh",
            "-c",
            "grep -E '^Sig(Blk|Ign)' /proc/self/status; \
             ps -o pid=,pgid= -p $$; tr '\\0' ' ' < /proc/$$/cmdline",
            "_",
        ]),
        Some(b"x\n"),
        0,
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mask = |name: &str| {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in {text}"));
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    assert_eq!(mask("SigBlk:"), 0, "signals blocked in the command: {text}");
    let sigpipe = 1u64 << (Signal::SIGPIPE as u32 - 1);
    assert_eq!(mask("SigIgn:") & sigpipe, 0, "SIGPIPE ignored: {text}");
    let ids: Vec<&str> = text.lines().nth(2).unwrap().split_whitespace().collect();
    assert_eq!(ids[0], ids[1], "not its own process group: {text}");
    assert!(
        text.lines().nth(3).unwrap().starts_with("sh -c "),
        "argv[0] is not as written: {text}"
    );

    let script = dir.path().join("no-shebang");
    std::fs::write(&script, "echo script \"$1\"\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = expect_code(
        &mut coord(&["exec", "--", path_str(&script)]),
        Some(b"a\n"),
        0,
    );
    assert_same("script output", &out.stdout, b"script a\n");

    let out = expect_code(&mut coord(&["exec", "--", "echo"]), Some(b"a\0b\nc\n"), 1);
    assert_same("output", &out.stdout, b"c\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 1: could not run echo:"), "{stderr}");
}

#[test]
fn exec_timeout_kills_the_commands_whole_process_group() {
    let dir = tempdir();
    let errors = dir.path().join("errors.jsonl");
    let marker = unique_number();
    // The hanging item starts a sleep in the background and waits in another:
    // neither is the process the worker started.
    let script = format!("if [ $1 = 2 ]; then sleep {marker} & sleep {marker}; wait; fi; echo $1");
    let out = expect_code(
        &mut coord(&[
            "exec",
            "-j",
            "2",
            "--timeout",
            "1s",
            "--errors",
            path_str(&errors),
            "--",
            "sh",
            "-c",
            &script,
            "_",
        ]),
        Some(b"1\n2\n3\n"),
        1,
    );
    assert_same("output", &out.stdout, b"1\n3\n");
    let records = records(&errors);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["line"], 2);
    assert_eq!(records[0]["kind"], "timed_out");
    // Nothing of the command is left running.
    wait_none_with_arg(&marker);
}

#[test]
fn exec_second_sigint_leaves_no_command_running() {
    let marker = unique_number();
    let mut cmd = coord(&[
        "exec",
        "-j",
        "2",
        "--",
        "sh",
        "-c",
        &format!("echo started $1; sleep {marker}; echo $1"),
        "_",
    ]);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"1\n2\n").unwrap();
    }
    let mut stderr = StderrLines::new(child.stderr.take().unwrap());
    wait_until("the commands to start", || {
        processes_with_arg(&marker).len() >= 2
    });
    signal(&child, Signal::SIGINT);
    // Two signals sent at once may arrive as one.
    assert!(
        stderr.wait_for("stopping after the items in flight"),
        "{}",
        stderr.seen
    );
    signal(&child, Signal::SIGINT);
    let status = wait_exit(&mut child, "pstream-coord after two SIGINTs");
    assert_eq!(status.code(), Some(130));
    wait_none_with_arg(&marker);
}

#[test]
fn exec_sigkill_of_the_launcher_leaves_no_command_running() {
    let marker = unique_number();
    let mut child = coord(&["exec", "-j", "2", "--", "sleep", &marker])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        // `sleep N N`: the item is appended.
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(format!("{marker}\n{marker}\n").as_bytes())
            .unwrap();
    }
    wait_until("the commands to start", || {
        processes_with_arg(&marker).len() >= 2
    });
    signal(&child, Signal::SIGKILL);
    wait_exit(&mut child, "pstream-coord after SIGKILL");
    wait_none_with_arg(&marker);
}

#[test]
fn exec_placeholders_tag_and_dry_run() {
    let dir = tempdir();
    let input = b"dir/sub/a.tar.gz\nb c\n";
    let out = expect_code(
        &mut coord(&[
            "exec", "--", "printf", "%s|", "{#}", "{/}", "{//}", "{.}", "{/.}", "{}",
        ]),
        Some(input),
        0,
    );
    assert_same(
        "placeholders",
        &out.stdout,
        b"1|a.tar.gz|dir/sub|dir/sub/a.tar|a.tar|dir/sub/a.tar.gz|2|b c|.|b c|b c|b c|",
    );
    let out = expect_code(
        &mut coord(&["exec", "--tag", "--", "printf", "x\\ny\\n"]),
        Some(b"one\ntwo\n"),
        0,
    );
    assert_same("tag", &out.stdout, b"one\tx\none\ty\ntwo\tx\ntwo\ty\n");

    // --dry-run prints the commands as a shell reads them back, and runs nothing.
    let made = dir.path().join("made");
    let out = expect_code(
        &mut coord(&[
            "exec",
            "--dry-run",
            "--",
            "touch",
            &format!("{}/{{}}", path_str(&made)),
        ]),
        Some(b"x\nit's\n"),
        0,
    );
    assert!(!made.exists(), "--dry-run ran a command");
    let want = format!("touch {0}/x\ntouch '{0}/it'\\''s'\n", path_str(&made));
    assert_same("dry run", &out.stdout, want.as_bytes());
    // Each line, given back to a shell, is the command that would have run.
    let echoed = sh(
        &String::from_utf8(out.stdout)
            .unwrap()
            .replace("touch ", "printf '%s|' "),
        None,
    );
    assert_same(
        "dry run read back",
        &echoed,
        format!("{0}/x|{0}/it's|", path_str(&made)).as_bytes(),
    );
}

#[test]
fn joblog_has_gnu_parallels_columns() {
    const SCRIPT: &str = "echo out $1; test $1 != b || exit 5; test $1 != c || kill -TERM $$";
    let dir = tempdir();
    let joblog = dir.path().join("jobs.tsv");
    expect_code(
        &mut coord(&[
            "exec",
            "-j",
            "2",
            "--joblog",
            path_str(&joblog),
            "--",
            "sh",
            "-c",
            SCRIPT,
            "_",
        ]),
        Some(b"a\nb\nc\nd'e\n"),
        1,
    );
    // The way scripts written for parallel's joblog read it: awk on tabs.
    let summary = sh(
        &format!(
            "awk -F'\\t' 'NR == 1 {{ print $1, $2, $3, $4, $5, $6, $7, $8, $9; next }} \
             {{ ok = ($3 ~ /^[0-9]+\\.[0-9][0-9][0-9]$/ && $4 ~ /^ *[0-9]+\\.[0-9][0-9][0-9]$/ \
             && length($4) >= 10); print $1, $2, ok, $5, $6, $7, $8, $9 }}' {}",
            path_str(&joblog)
        ),
        None,
    );
    assert_same(
        "the joblog, as awk reads it",
        &summary,
        b"Seq Host Starttime JobRuntime Send Receive Exitval Signal Command\n\
          1 : 1 0 6 0 0 sh -c 'echo out $1; test $1 != b || exit 5; test $1 != c || kill -TERM $$' _ a\n\
          2 : 1 0 6 5 0 sh -c 'echo out $1; test $1 != b || exit 5; test $1 != c || kill -TERM $$' _ b\n\
          3 : 1 0 6 0 15 sh -c 'echo out $1; test $1 != b || exit 5; test $1 != c || kill -TERM $$' _ c\n\
          4 : 1 0 8 0 0 sh -c 'echo out $1; test $1 != b || exit 5; test $1 != c || kill -TERM $$' _ 'd'\\''e'\n",
    );
    // GNU parallel itself reads it: --resume skips the jobs it logs as run (the
    // four here), and would refuse a log in another format.
    let parallel = Command::new("parallel").arg("--version").output();
    if !parallel.is_ok_and(|o| o.status.success()) {
        eprintln!("note: GNU parallel is not installed; its own reading of the joblog is skipped");
        return;
    }
    let out = expect_code(
        Command::new("parallel")
            .args([
                "--resume",
                "--joblog",
                path_str(&joblog),
                "echo",
                "ran",
                ":::",
            ])
            .args(["a", "b", "c", "d'e", "fifth"]),
        None,
        0,
    );
    assert_same(
        "parallel --resume over our joblog",
        &out.stdout,
        b"ran fifth\n",
    );
}

/// The commands of a slow exec job: a line per item, after a little work.
fn slow_exec<'a>(input: &'a Path, output: &'a Path, errors: &'a Path) -> Vec<&'a str> {
    vec![
        "exec",
        "-j",
        "2",
        "--input",
        path_str(input),
        "--output",
        path_str(output),
        "--errors",
        path_str(errors),
        "--",
        "sh",
        "-c",
        "test $(($1 % 97)) != 0 || exit 1; echo $1 $(($1 * 2))",
        "_",
    ]
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[test]
fn a_joblog_that_is_the_input_is_refused() {
    let dir = tempdir();
    let input = dir.path().join("input");
    std::fs::write(&input, b"a\nb\n").unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&input, &link).unwrap();
    let out = expect_code(
        &mut coord(&[
            "exec",
            "-i",
            path_str(&input),
            "--joblog",
            path_str(&link),
            "--",
            "echo",
        ]),
        None,
        2,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the job log (--joblog"), "{stderr}");
    assert!(stderr.contains("is the same file as the input"), "{stderr}");
    assert_eq!(read(&input), b"a\nb\n");
}

#[test]
fn exec_sigkill_then_resume_equals_an_uninterrupted_run() {
    let dir = tempdir();
    let input = dir.path().join("input");
    std::fs::write(&input, seq(scale(3000).max(3000))).unwrap();
    let (want_out, want_err) = (dir.path().join("want.out"), dir.path().join("want.err"));
    expect_code(
        &mut coord(&slow_exec(&input, &want_out, &want_err)),
        None,
        1,
    );

    let (out, err) = (dir.path().join("got.out"), dir.path().join("got.err"));
    let journal = dir.path().join("got.out.pstream-resume");
    for round in 0..2 {
        let mut args = slow_exec(&input, &out, &err);
        if round > 0 {
            args.insert(1, "--resume");
        }
        let mut child = coord(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = file_len(&out);
        wait_until("the output to grow", || file_len(&out) > start + 2000);
        signal(&child, Signal::SIGKILL);
        wait_exit(&mut child, "pstream-coord after SIGKILL");
        assert!(
            journal.exists(),
            "round {round}: the job finished before it was killed; make it longer"
        );
    }
    let mut args = slow_exec(&input, &out, &err);
    args.insert(1, "--resume");
    let done = expect_code(&mut coord(&args), None, 1);
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(stderr.contains("resumed after line"), "{stderr}");
    assert_same("resumed output", &read(&out), &read(&want_out));
    assert_same("resumed errors", &read(&err), &read(&want_err));
    assert!(!journal.exists(), "the journal outlived the finished job");
}

#[test]
fn exec_refuses_a_missing_command_and_resume_of_another_command() {
    let out = expect_code(&mut coord(&["exec"]), Some(b""), 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("CMD"));
    let dir = tempdir();
    let (input, output) = (dir.path().join("in"), dir.path().join("out"));
    std::fs::write(&input, b"1\n2\n").unwrap();
    std::fs::write(&output, b"partial\n").unwrap();
    let journal = dir.path().join("out.pstream-resume");
    // A journal of an `echo` job does not resume a `printf` one.
    expect_code(
        &mut coord(&[
            "exec",
            "-i",
            path_str(&input),
            "-o",
            path_str(&output),
            "--",
            "echo",
        ]),
        None,
        0,
    );
    assert!(!journal.exists());
    let mut cmd = coord(&[
        "exec",
        "-i",
        path_str(&input),
        "-o",
        path_str(&output),
        "--",
        "sleep",
        "100",
    ]);
    let mut child = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the journal", || journal.exists());
    signal(&child, Signal::SIGKILL);
    wait_exit(&mut child, "pstream-coord after SIGKILL");
    let out = expect_code(
        &mut coord(&[
            "exec",
            "--resume",
            "-i",
            path_str(&input),
            "-o",
            path_str(&output),
            "--",
            "echo",
        ]),
        None,
        2,
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("different job"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------
// pipe

#[test]
fn pipe_awk_equals_one_awk() {
    let dir = tempdir();
    let input = dir.path().join("numbers");
    std::fs::write(&input, seq(scale(20_000_000))).unwrap();
    let want = sh(&format!("awk '{{print $1*2}}' {}", path_str(&input)), None);
    let out = expect_code(
        &mut coord(&["pipe", "-i", path_str(&input), "--", "awk", "{print $1*2}"]),
        None,
        0,
    );
    assert_same("pipe awk", &out.stdout, &want);
}

#[test]
fn pipe_a_poison_line_is_found_and_everything_else_written() {
    let dir = tempdir();
    let input = dir.path().join("numbers");
    let errors = dir.path().join("errors.jsonl");
    let n = scale(2_000_000).max(200_000);
    std::fs::write(&input, seq(n)).unwrap();
    let want = sh(
        &format!("awk '$1 != 123457 {{print $1*2}}' {}", path_str(&input)),
        None,
    );
    let out = expect_code(
        &mut coord(&[
            "pipe",
            "-i",
            path_str(&input),
            "--errors",
            path_str(&errors),
            "--",
            "awk",
            "$1==123457{print \"poisoned\" > \"/dev/stderr\"; exit 3} {print $1*2}",
        ]),
        None,
        1,
    );
    assert_same("every other line's output", &out.stdout, &want);
    let records = records(&errors);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["line"], 123457);
    assert_eq!(records[0]["input"], "123457");
    assert_eq!(records[0]["error"], "exit code 3; stderr: poisoned");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(" {} ok, 1 failed", n - 1)),
        "{stderr}"
    );
}

#[test]
fn pipe_no_bisect_fails_the_block_whole() {
    let dir = tempdir();
    let errors = dir.path().join("errors.jsonl");
    let out = expect_code(
        &mut coord(&[
            "pipe",
            "--lines",
            "4",
            "--no-bisect",
            "--errors",
            path_str(&errors),
            "--",
            "awk",
            "$1==6{exit 3} {print $1*2}",
        ]),
        Some(&seq(10)),
        1,
    );
    assert_same("the other blocks", &out.stdout, b"2\n4\n6\n8\n18\n20\n");
    let records = records(&errors);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["line"], 5);
    assert_eq!(records[0]["lines"], 4);
    assert_eq!(records[0]["input"], "5\n6\n7\n8");
}

#[test]
fn pipe_many_failing_lines_are_found_up_to_a_limit() {
    let dir = tempdir();
    let errors = dir.path().join("errors.jsonl");
    // Every line fails: the first 32 of the block are located, the rest reported
    // in the parts bisection had reached.
    let out = expect_code(
        &mut coord(&[
            "pipe",
            "--lines",
            "1000",
            "--errors",
            path_str(&errors),
            "--",
            "sh",
            "-c",
            "exit 1",
        ]),
        Some(&seq(1000)),
        1,
    );
    assert!(out.stdout.is_empty());
    let records = records(&errors);
    let single = records.iter().filter(|r| r.get("lines").is_none()).count();
    assert_eq!(single, 32, "{records:?}");
    let covered: u64 = records
        .iter()
        .map(|r| r.get("lines").and_then(|l| l.as_u64()).unwrap_or(1))
        .sum();
    assert_eq!(covered, 1000, "every line is accounted for");
}

#[test]
fn pipe_nul_separated_blocks() {
    let input = b"a\nb\0c\0d";
    let out = expect_code(
        &mut coord(&["pipe", "-0", "--lines", "2", "--", "od", "-An", "-c"]),
        Some(input),
        0,
    );
    let want = [
        sh("printf 'a\\nb\\0c\\0' | od -An -c", None),
        sh("printf 'd\\0' | od -An -c", None),
    ]
    .concat();
    assert_same("pipe -0", &out.stdout, &want);
}

#[test]
fn pipe_dry_run_prints_a_command_per_block() {
    let out = expect_code(
        &mut coord(&["pipe", "--dry-run", "--lines", "3", "--", "wc", "-l"]),
        Some(&seq(7)),
        0,
    );
    assert_same("dry run", &out.stdout, b"wc -l\nwc -l\nwc -l\n");
}

/// The launcher's peak RSS piping `seq 1 n` through awk.
fn peak_rss_pipe(n: u64) -> u64 {
    let mut cmd = coord(&["pipe", "-j", "2", "--", "awk", "{print $1*2}"]);
    peak_rss_fed_numbers(&mut cmd, n, PATIENCE)
}

#[test]
fn pipe_memory_is_bounded_by_the_window_not_the_input() {
    const MIB: u64 = 1 << 20;
    // 3M lines (20 MB) are already more than the window of blocks holds.
    let small = peak_rss_pipe(scale(3_000_000));
    let large = peak_rss_pipe(scale(10_000_000));
    eprintln!(
        "peak RSS: {} KiB at 3M lines, {} KiB at 10M",
        small / 1024,
        large / 1024
    );
    assert!(
        large < 96 * MIB,
        "peak RSS {} MiB at 10M lines",
        large / MIB
    );
    // The smaller run may end before its window ever fills (blocks read ahead and
    // outputs held for the order, 8 blocks of 1 MiB each way): up to about 16 MiB
    // between the two is the window, not the input. The 7M lines more (about 50 MB)
    // would show far above that if they were kept.
    assert!(
        large < small + 24 * MIB,
        "memory grows with the input: {} KiB at 3M lines, {} KiB at 10M",
        small / 1024,
        large / 1024
    );
}
