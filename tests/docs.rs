//! The documentation's commands, run: every block of README.md and docs/cli.md that
//! is marked runnable, with the built binaries on the PATH, in an empty temporary
//! directory, with a deadline; so the docs cannot drift from the program again.
//!
//! The marks are HTML comments (invisible when rendered), each on the line before a
//! fenced block:
//!
//! * `<!-- runnable: NAME -->` (or `<!-- runnable: NAME exit=N -->`): a `sh` block,
//!   run; the blocks of one NAME run in order, in one shell, in one directory (a
//!   `cd` carries over). The block must exit 0 (or N: its last command's status).
//! * `<!-- output: NAME -->`: what the block of NAME just before it prints on stdout,
//!   exactly.
//! * `<!-- file: NAME PATH -->`: the block's text is written to PATH (relative to the
//!   shell's directory at that point), as a reader would save it.

#[path = "support/cli.rs"]
#[allow(dead_code)] // shared with the other launcher tests
mod util;

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// A marked block.
#[derive(Debug)]
enum Block {
    Run { text: String, exit: i32, at: String },
    Output { text: String, at: String },
    File { path: String, text: String },
}

/// The marked blocks of `doc`, by name, in document order.
fn blocks(doc: &str) -> BTreeMap<String, Vec<Block>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let text = std::fs::read_to_string(root.join(doc)).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut found: BTreeMap<String, Vec<Block>> = BTreeMap::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        i += 1;
        let Some(mark) = line
            .strip_prefix("<!-- ")
            .and_then(|l| l.strip_suffix(" -->"))
        else {
            continue;
        };
        let Some((kind, args)) = mark.split_once(": ") else {
            continue;
        };
        if !["runnable", "output", "file"].contains(&kind) {
            continue;
        }
        let at = format!("{doc}:{i}");
        // The fence: the next line, indented like the mark.
        let fence = lines.get(i).copied().unwrap_or("");
        let indent = fence.len() - fence.trim_start().len();
        assert!(
            fence.trim_start().starts_with("```"),
            "{at}: a `{kind}` mark must be followed by a fenced block"
        );
        i += 1;
        let mut body = String::new();
        while i < lines.len() && lines[i].trim() != "```" {
            let l = lines[i];
            body.push_str(
                l.get(indent.min(l.len() - l.trim_start().len())..)
                    .unwrap_or(""),
            );
            body.push('\n');
            i += 1;
        }
        assert!(i < lines.len(), "{at}: the fenced block does not end");
        i += 1;
        let mut args = args.split_whitespace();
        let name = args.next().expect("a name").to_string();
        let block = match kind {
            "runnable" => {
                let exit = args
                    .next()
                    .map(|a| a.strip_prefix("exit=").expect("exit=N").parse().unwrap())
                    .unwrap_or(0);
                Block::Run {
                    text: body,
                    exit,
                    at,
                }
            }
            "output" => Block::Output { text: body, at },
            _ => Block::File {
                path: args.next().expect("file: NAME PATH").to_string(),
                text: body,
            },
        };
        found.entry(name).or_default().push(block);
    }
    found
}

/// Where a runnable block's stdout ends.
const MARK: &str = "@@pstream-docs-block-end@@";

/// The shell script for one name's blocks.
fn script(blocks: &[Block]) -> String {
    let mut script = String::from("set -e\n");
    for block in blocks {
        match block {
            Block::Run { text, exit, .. } => {
                if *exit == 0 {
                    script.push_str(text);
                } else {
                    script.push_str("set +e\n");
                    script.push_str(text);
                    script.push_str(&format!(
                        "status=$?\nset -e\nif [ $status -ne {exit} ]; then \
                         echo \"exit status $status, not {exit}\" >&2; exit 99; fi\n"
                    ));
                }
                script.push_str(&format!("echo {MARK}\n"));
            }
            Block::File { path, text } => {
                script.push_str(&format!(
                    "cat > '{path}' <<'PSTREAM_DOCS_EOF'\n{text}PSTREAM_DOCS_EOF\n"
                ));
            }
            Block::Output { .. } => {}
        }
    }
    script
}

/// Run one name's blocks in `dir` with the launcher on the PATH, within `patience`;
/// check their exit and outputs.
fn run_blocks(
    doc: &str,
    name: &str,
    blocks: &[Block],
    dir: &Path,
    env: &[(&str, &str)],
    patience: Duration,
) {
    let bin_dir = PathBuf::from(env!("CARGO_BIN_EXE_pstream-coord"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![bin_dir];
    paths.extend(std::env::split_paths(&path));
    let script = script(blocks);
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(&script)
        .current_dir(dir)
        .env("PATH", std::env::join_paths(paths).unwrap())
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        // A reader's `target/release/...` is under their package, wherever this
        // test's cargo builds.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let child = cmd.spawn().expect("start sh");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = match rx.recv_timeout(patience) {
        Ok(output) => output.expect("wait for sh"),
        Err(_) => {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let output = rx.recv().expect("the waiting thread ends").expect("wait");
            panic!(
                "{doc} `{name}` did not end within {patience:?}\n--- script:\n{script}\n--- stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let report = format!(
        "--- script:\n{script}\n--- status: {}\n--- stdout:\n{stdout}\n--- stderr:\n{stderr}",
        output.status
    );
    assert!(output.status.success(), "{doc} `{name}` failed\n{report}");
    // Each runnable block's stdout, in order.
    let separator = format!("{MARK}\n");
    let mut printed = stdout.split(separator.as_str());
    let mut last = None;
    for block in blocks {
        match block {
            Block::Run { at, .. } => last = Some((at, printed.next().unwrap_or(""))),
            Block::Output { text, at } => {
                let (run_at, got) = last
                    .take()
                    .unwrap_or_else(|| panic!("{at}: an output with no runnable block before it"));
                assert_eq!(
                    got, text,
                    "{at}: the block at {run_at} does not print what the docs say\n{report}"
                );
            }
            Block::File { .. } => {}
        }
    }
}

/// Every runnable block of README.md and docs/cli.md, but "Your first plugin" (its
/// own test, below: it builds a package).
#[test]
fn the_documented_commands_do_what_the_docs_say() {
    let mut ran = Vec::new();
    for doc in ["README.md", "docs/cli.md"] {
        for (name, blocks) in blocks(doc) {
            if name == "first-plugin" {
                continue;
            }
            let dir = tempfile::tempdir().unwrap();
            run_blocks(
                doc,
                &name,
                &blocks,
                dir.path(),
                &[],
                Duration::from_secs(300),
            );
            ran.push(format!("{doc} {name}"));
        }
    }
    // The marks are not lost in an edit.
    for want in [
        "README.md readme",
        "docs/cli.md examples",
        "docs/cli.md failed-items",
        "docs/cli.md functions",
        "docs/cli.md tag",
    ] {
        assert!(ran.iter().any(|r| r == want), "{want} did not run: {ran:?}");
    }
}

/// docs/cli.md's "Your first plugin", word for word: `cargo new`, `cargo add
/// pstream --path ../pstream` (a link to this workspace, where a reader's clone
/// would be), the two files, `cargo build --release`, and the launcher on the
/// plugin. Offline unless the environment says otherwise: cargo's cache has every
/// crate the workspace needs, which is every crate the plugin needs.
#[test]
fn your_first_plugin_word_for_word() {
    let all = blocks("docs/cli.md");
    let blocks = all.get("first-plugin").expect("the first plugin's blocks");
    let text = script(blocks);
    for step in [
        "cargo new my-plugin",
        "cargo add pstream --path ../pstream",
        "cat > 'src/lib.rs'",
        "cat > 'src/main.rs'",
        "cargo build --release",
    ] {
        assert!(text.contains(step), "the section lost `{step}`:\n{text}");
    }
    let dir = tempfile::tempdir().unwrap();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap();
    std::os::unix::fs::symlink(&workspace, dir.path().join("pstream")).unwrap();
    let offline = std::env::var("CARGO_NET_OFFLINE").unwrap_or_else(|_| "true".into());
    run_blocks(
        "docs/cli.md",
        "first-plugin",
        blocks,
        dir.path(),
        &[("CARGO_NET_OFFLINE", &offline)],
        Duration::from_secs(1200),
    );
}
