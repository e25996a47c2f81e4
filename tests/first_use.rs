//! What a first-time user of `pstream-coord` runs into (issue 13, items 4 to 6): a
//! typed function over plain lines, a wrong plugin, and output lined up with the
//! input. Each test runs the built launcher with a deadline.

#[path = "support/cli.rs"]
#[allow(dead_code)] // shared with the other launcher tests
mod util;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use util::*;

/// Run `cmd` with `stdin` to its end, with a hang guard (then it is killed).
fn run_with(cmd: &mut Command, stdin: &[u8]) -> Output {
    cmd.stdin(Stdio::piped());
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", describe(cmd)));
    let mut pipe = child.stdin.take().unwrap();
    let bytes = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = pipe.write_all(&bytes);
    });
    let collect = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = pipe.read_to_end(&mut v);
            v
        })
    };
    let stdout = collect(Box::new(child.stdout.take().unwrap()));
    let stderr = collect(Box::new(child.stderr.take().unwrap()));
    let status = wait_exit(&mut child, &describe(cmd));
    feeder.join().unwrap();
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// Run the launcher with `args` over `stdin` and check its exit code.
fn coord_run(args: &[&str], stdin: &[u8], code: i32) -> Output {
    let mut cmd = coord(args);
    let output = run_with(&mut cmd, stdin);
    check_code(&cmd, &output, code);
    output
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn numbers(range: std::ops::RangeInclusive<u64>) -> Vec<u8> {
    range
        .map(|n| format!("{n}\n"))
        .collect::<String>()
        .into_bytes()
}

// ---------------------------------------------------------------------------------
// Item 4: a typed function over plain lines.

/// `seq 1 5 | pstream-coord run -f double`, with the default `--format lines`: the
/// input type (`i64`) decides that a line is read as a number.
#[test]
fn plain_lines_feed_a_function_of_numbers() {
    let out = coord_run(&["run", "-f", "double"], &numbers(1..=5), 0);
    assert_eq!(text(&out.stdout), "2\n4\n6\n8\n10\n");
    // And a function of strings still gets the text as it is.
    let out = coord_run(&["run", "-f", "upper"], b"1\ntrue\n{\"a\":1}\n", 0);
    assert_eq!(text(&out.stdout), "1\nTRUE\n{\"A\":1}\n");
}

/// Many lines failing the same way: a few messages and a count on stderr, and a
/// record of every one in the errors file.
#[test]
fn the_same_failure_on_many_lines_is_shown_a_few_times_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let errors = dir.path().join("errors.jsonl");
    let mut input = b"1\n".to_vec();
    for _ in 0..2000 {
        input.extend_from_slice(b"x\n");
    }
    input.extend_from_slice(b"3\n");
    let out = coord_run(
        &["run", "-f", "double", "--errors", errors.to_str().unwrap()],
        &input,
        1,
    );
    assert_eq!(text(&out.stdout), "2\n6\n");
    let stderr = text(&out.stderr);
    let messages = stderr.matches("is not an i64").count();
    assert!(
        (1..=10).contains(&messages),
        "{messages} messages for 2000 failures:\n{stderr}"
    );
    assert!(
        stderr.contains("more lines failed like line 2 (2000 in all; every one is recorded in"),
        "no count of the lines not shown:\n{stderr}"
    );
    let records = std::fs::read_to_string(&errors).unwrap();
    assert_eq!(records.lines().count(), 2000, "one record per failed line");
    assert!(stderr.contains("2 ok, 2000 failed"), "{stderr}");
}

// ---------------------------------------------------------------------------------
// Item 6: output lined up with the input.

/// Lines 1 to n, with `x` (which `double` fails on) at every 7th.
fn numbers_and_failures(n: u64) -> Vec<String> {
    (1..=n)
        .map(|i| {
            if i % 7 == 0 {
                "x".to_string()
            } else {
                i.to_string()
            }
        })
        .collect()
}

fn joined(lines: &[String]) -> Vec<u8> {
    lines
        .iter()
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        .into_bytes()
}

/// `--tag` with `--unordered`: every output line names its input.
#[test]
fn tag_ties_unordered_results_to_their_inputs() {
    let input = numbers_and_failures(3000);
    let out = coord_run(
        &[
            "run",
            "-f",
            "double",
            "--unordered",
            "--tag",
            "--workers",
            "2",
        ],
        &joined(&input),
        1,
    );
    let mut seen = Vec::new();
    for line in text(&out.stdout).lines() {
        let (tag, result) = line
            .split_once('\t')
            .unwrap_or_else(|| panic!("an untagged line: {line:?}"));
        let n: i64 = tag.parse().unwrap();
        assert_eq!(result, (2 * n).to_string(), "line {line:?}");
        seen.push(n);
    }
    seen.sort_unstable();
    let want: Vec<i64> = input.iter().filter_map(|l| l.parse().ok()).collect();
    assert_eq!(seen, want);
}

/// `--on-error placeholder`: line N of the output is input line N's, in both
/// formats, with and without `--tag`.
#[test]
fn a_placeholder_keeps_output_line_n_for_input_line_n() {
    let input = numbers_and_failures(500);
    type Expected = fn(&str) -> String;
    let cases: [(&[&str], Expected); 3] = [
        (&[], |l| {
            l.parse::<i64>()
                .map(|n| (2 * n).to_string())
                .unwrap_or_default()
        }),
        (&["--format", "jsonl"], |l| {
            l.parse::<i64>()
                .map(|n| (2 * n).to_string())
                .unwrap_or_else(|_| "null".into())
        }),
        (&["--tag"], |l| {
            let result = l
                .parse::<i64>()
                .map(|n| (2 * n).to_string())
                .unwrap_or_default();
            format!("{l}\t{result}")
        }),
    ];
    let dir = tempfile::tempdir().unwrap();
    let errors = dir.path().join("errors.jsonl");
    for (extra, expected) in cases {
        let mut args = vec![
            "run",
            "-f",
            "double",
            "--on-error",
            "placeholder",
            "--errors",
            errors.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = coord_run(&args, &joined(&input), 1);
        let want: String = input.iter().map(|l| expected(l) + "\n").collect();
        assert_eq!(text(&out.stdout), want, "{extra:?}");
        let records = std::fs::read_to_string(&errors).unwrap();
        assert_eq!(records.lines().count(), 500 / 7, "{extra:?}");
    }
}
// ---------------------------------------------------------------------------------
// Item 5: a wrong plugin.

/// A script in `dir`, executable.
fn script(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_str().unwrap().to_string()
}

/// A plugin that exits before its handshake: reported at once, with its exit
/// status and the last of what it wrote, in the error message.
#[test]
fn a_plugin_that_exits_at_once_is_reported_with_its_status_and_output() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = script(
        dir.path(),
        "broken-plugin",
        "echo 'starting up' >&2\necho 'error while loading shared libraries: libfoo.so.1' >&2\nexit 127",
    );
    for args in [
        vec!["run", "--plugin", &plugin, "-f", "twice", "--workers", "1"],
        vec!["functions", "--plugin", &plugin],
    ] {
        let out = coord_run(&args, b"1\n", 3);
        let stderr = text(&out.stderr);
        let error = stderr
            .split("pstream-coord: failed to ")
            .nth(1)
            .unwrap_or_else(|| panic!("no error message:\n{stderr}"));
        assert!(
            error.contains("exited with status 127 before completing the handshake"),
            "{stderr}"
        );
        assert!(
            error.contains("error while loading shared libraries: libfoo.so.1"),
            "the error does not quote what the plugin wrote:\n{stderr}"
        );
        assert_eq!(
            stderr.matches("libfoo.so.1").count(),
            1,
            "the plugin's output is shown once, in the error:\n{stderr}"
        );
    }
}

/// A program that runs but never connects: reported after `--handshake-timeout`.
#[test]
fn a_plugin_that_never_connects_is_reported_after_the_handshake_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = script(
        dir.path(),
        "silent-plugin",
        "echo 'listening' >&2\nexec sleep 600",
    );
    for args in [
        vec![
            "run",
            "--plugin",
            &plugin,
            "-f",
            "twice",
            "--handshake-timeout",
            "300ms",
        ],
        vec![
            "functions",
            "--plugin",
            &plugin,
            "--handshake-timeout",
            "300ms",
        ],
    ] {
        let out = coord_run(&args, b"1\n", 3);
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("did not complete the handshake within 300ms"),
            "{stderr}"
        );
        assert!(stderr.contains("listening"), "{stderr}");
    }
}
