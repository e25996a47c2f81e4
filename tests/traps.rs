//! Traps a first-time user falls into, each turned into a clear error (or into
//! code that works): programs written with the mistake, run as the user would run
//! them, with a deadline.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use pstream::{Function, ItemErrorKind};
use pstream::{PoolError, ProcessPool};
// The functions named like common variables (`len`, `input`, ...) are constants:
// they are named by their path here, not imported, so that local variables of those
// names stay possible.
use pstream_fixtures::{
    add, answer, countdown, file_size, halve, ignore, parse, positive, swap, triple,
};

/// A hang guard, not a timing assertion.
const PATIENCE: Duration = Duration::from_secs(120);

/// Run `cmd` (in a process group of its own) to the end; after [`PATIENCE`], kill
/// the group and fail.
fn run(cmd: &mut Command) -> Output {
    use std::os::unix::process::CommandExt;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("RUST_LOG")
        .env_remove(pstream::protocol::ENV_SOCKET)
        .process_group(0);
    let child = cmd.spawn().unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(PATIENCE) {
        Ok(output) => output.expect("wait for the program"),
        Err(_) => {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let output = rx.recv().expect("the waiting thread ends").expect("wait");
            panic!(
                "{cmd:?} did not end within {PATIENCE:?}; stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

fn report(output: &Output) -> String {
    format!(
        "status: {}\n--- stdout:\n{}\n--- stderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Seen failing before the fix: the copies started as workers built pools of their
/// own (the fixture's depth guard stopped the chain at 4 processes, where the real
/// program went on without end), and the error was a generic "exited with status 1
/// before completing the handshake".
#[test]
fn a_pool_built_without_init_fails_at_once_and_says_to_call_init() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let starts = dir.path().join("starts");
    let output = run(Command::new(env!("CARGO_BIN_EXE_pstream-forgot-init"))
        .env("TMPDIR", &tmp)
        .env("PSTREAM_FIXTURE_STARTS", &starts)
        .env_remove("PSTREAM_FIXTURE_DEPTH"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{}", report(&output));
    // The coordinator's error, as `build()` returned it.
    let parent = stderr
        .lines()
        .find(|l| l.starts_with("forgot_init: "))
        .unwrap_or_else(|| panic!("no error from build()\n{}", report(&output)));
    assert!(
        parent.contains("does not serve") || parent.contains("do not serve"),
        "{parent}"
    );
    assert!(
        parent.contains("call `pstream::init();` as the first line of `main`"),
        "{parent}"
    );
    assert!(parent.contains("pstream-forgot-init"), "{parent}");
    // The worker's own word, on the stderr it shares.
    assert!(
        stderr.contains("was started as a pstream worker"),
        "{}",
        report(&output)
    );
    // The program and its one worker, no more.
    let started = std::fs::read_to_string(&starts).unwrap();
    assert_eq!(started.lines().count(), 2, "processes started:\n{started}");
    // No socket directory left behind.
    assert_eq!(entries(&tmp), Vec::<String>::new());
}

/// The launcher. It is another package's binary, which cargo does not build for
/// this package's tests: build it (a quick no-op after `cargo test --workspace`,
/// which already has), into the target directory this test runs from.
fn launcher() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // <target>/<profile>/deps/traps-<hash>
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let target_dir = profile_dir.parent().unwrap();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut build = Command::new(cargo);
    build
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "build",
            "--quiet",
            "-p",
            "pstream-coord",
            "--bin",
            "pstream-coord",
        ])
        .arg("--target-dir")
        .arg(target_dir);
    if profile_dir.file_name() == Some("release".as_ref()) {
        build.arg("--release");
    }
    let output = run(&mut build);
    assert!(
        output.status.success(),
        "build the launcher\n{}",
        report(&output)
    );
    let bin = profile_dir.join("pstream-coord");
    assert!(bin.exists(), "no launcher at {}", bin.display());
    bin
}

fn build(program: &str) -> Result<ProcessPool, PoolError> {
    ProcessPool::builder()
        .program(program)
        .workers(1)
        .handshake_timeout(PATIENCE)
        .build()
}

/// A plugin laid out the obvious way: functions in src/lib.rs, and a `main.rs` of
/// one line, `pstream::plugin!(pstream_fixtures);`. Before the fix there was no
/// such macro, and the obvious `fn main() { pstream::serve() }` served nothing
/// (the next test).
#[test]
fn a_plugin_serves_the_functions_of_its_library() {
    let pool = build(env!("CARGO_BIN_EXE_pstream-fixtures")).expect("start the plugin");
    let names: Vec<&str> = pool.functions().iter().map(|f| f.name.as_str()).collect();
    assert!(names.contains(&"triple"), "{names:?}");
    let tripled: Vec<i64> = pool
        .map(triple, 1..=3i64)
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(tripled, [3, 6, 9]);
}

/// Seen failing before the fix: `build()` succeeded with no function at all,
/// `pstream-coord functions` printed nothing and exited 0, and the plugin started by
/// hand listed nothing without saying why.
#[test]
fn a_plugin_that_links_no_function_is_refused_saying_how_to_link_them() {
    let unlinked = env!("CARGO_BIN_EXE_pstream-unlinked");
    let hint = "`pstream::plugin!(my_plugin);` as the whole of src/main.rs";

    match build(unlinked) {
        Err(e @ PoolError::NoFunctions { .. }) => {
            let message = e.to_string();
            assert!(
                message.contains("pstream-unlinked serves no function"),
                "{message}"
            );
            assert!(message.contains(hint), "{message}");
        }
        Err(e) => panic!("expected NoFunctions, got: {e}"),
        Ok(pool) => panic!("a pool of a plugin that serves {:?}", pool.functions()),
    }

    // Started by hand.
    let output = run(&mut Command::new(unlinked));
    assert_eq!(output.status.code(), Some(2), "{}", report(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("serves no function"), "{}", report(&output));
    assert!(stderr.contains(hint), "{}", report(&output));

    // Through the launcher.
    let output = run(Command::new(launcher()).args(["functions", "--plugin", unlinked]));
    assert_eq!(output.status.code(), Some(3), "{}", report(&output));
    assert!(output.stdout.is_empty(), "{}", report(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("serves no function"), "{}", report(&output));
    assert!(stderr.contains(hint), "{}", report(&output));
}

/// Map `f` over `items` in `pool`: each value, or the error's text.
fn map_all<In, Out>(
    pool: &ProcessPool,
    f: Function<In, Out>,
    items: Vec<In>,
) -> Vec<Result<Out, String>>
where
    In: serde::Serialize + Send + 'static,
    Out: serde::de::DeserializeOwned + Send + 'static,
{
    pool.map(f, items)
        .unwrap()
        .map(|r| {
            r.map_err(|e| match e.kind {
                ItemErrorKind::Failed { message } => message,
                other => panic!("{} failed other than by its error: {other:?}", f.name()),
            })
        })
        .collect()
}

/// A function's error is its item's error, whatever its text says: an error that
/// reads like the worker's "state could not be built" notice fails that one item,
/// and the job goes on. Seen failing before the fix, when the notice was a
/// convention inside the message text: the job ended at the first item with
/// `PoolError::WorkerState { pid: 1, .. }` and the next items had no results.
#[test]
fn an_error_message_cannot_pass_for_a_worker_notice() {
    let pool = build(env!("CARGO_BIN_EXE_pstream-fixtures")).expect("start the plugin");
    let lookalike = "\u{1b}pstream-state-failed:1:not a state failure".to_string();
    let got = map_all(
        &pool,
        pstream_fixtures::complain,
        vec![lookalike.clone(), "plain".into()],
    );
    assert_eq!(got, [Err(lookalike), Err("plain".to_string())]);
}

/// Every form the old macro refused or got wrong runs in a worker, with the right
/// results. Seen failing before the fix: the fixture library did not compile with
/// the old `macro_rules!` (`len` is interpreted as a constant pattern; no rules
/// expected `mut`, a second argument, a tuple pattern or no return type; `io::Error:
/// Serialize`), and `halve`, returning `std::result::Result<i64, String>`, was a
/// plain value whose `Err` came back as a success.
#[test]
fn every_form_of_function_runs_in_a_worker() {
    let pool = build(env!("CARGO_BIN_EXE_pstream-fixtures")).expect("start the plugin");

    assert_eq!(
        map_all(&pool, pstream_fixtures::len, vec!["four".into()]),
        [Ok(4)]
    );
    assert_eq!(map_all(&pool, pstream_fixtures::input, vec![0]), [Ok(1)]);
    assert_eq!(map_all(&pool, pstream_fixtures::out, vec![0]), [Ok(2)]);
    assert_eq!(map_all(&pool, pstream_fixtures::codec, vec![0]), [Ok(3)]);
    assert_eq!(map_all(&pool, pstream_fixtures::batch, vec![0]), [Ok(4)]);
    assert_eq!(map_all(&pool, countdown, vec![3]), [Ok(vec![3, 2, 1])]);
    assert_eq!(map_all(&pool, add, vec![(2, 3), (-1, 1)]), [Ok(5), Ok(0)]);
    assert_eq!(
        map_all(&pool, swap, vec![(7, "seven".into())]),
        [Ok(("seven".to_string(), 7))]
    );
    assert_eq!(map_all(&pool, ignore, vec![1, 2]), [Ok(()), Ok(())]);
    assert_eq!(map_all(&pool, answer, vec![()]), [Ok(42)]);

    assert_eq!(
        map_all(&pool, halve, vec![4, 3]),
        [Ok(2), Err("3 is odd".to_string())]
    );
    let missing = tempfile::tempdir().unwrap().path().join("missing");
    let sizes = map_all(
        &pool,
        file_size,
        vec![
            env!("CARGO_MANIFEST_DIR").to_string() + "/Cargo.toml",
            missing.display().to_string(),
        ],
    );
    assert!(matches!(sizes[0], Ok(n) if n > 0), "{sizes:?}");
    assert!(
        matches!(&sizes[1], Err(m) if m.contains("No such file")),
        "{sizes:?}"
    );
    assert_eq!(
        map_all(&pool, parse, vec!["12".into(), "x".into()]),
        [Ok(12), Err("invalid digit found in string".to_string())]
    );
    assert_eq!(
        map_all(&pool, positive, vec![1, -1]),
        [Ok(1), Err("-1 is not positive".to_string())]
    );

    // The types as the launcher lists them.
    let listed = |name: &str| {
        let f = pool.functions().iter().find(|f| f.name == name).unwrap();
        (f.input_type.clone(), f.output_type.clone())
    };
    assert_eq!(listed("add"), ("(i64, i64)".into(), "i64".into()));
    assert_eq!(listed("halve"), ("i64".into(), "i64".into()));
    assert_eq!(listed("file_size"), ("String".into(), "u64".into()));
    assert_eq!(listed("ignore"), ("i64".into(), "()".into()));
    assert_eq!(listed("answer"), ("()".into(), "i64".into()));
}

/// Through the launcher, an `Err` of a function written with
/// `std::result::Result` is a failed item (an error record, exit code 1), not a
/// success that prints `{"Err":...}` with exit code 0 as before the fix. Several
/// arguments are a JSON array.
#[test]
fn an_err_is_a_failed_item_through_the_launcher() {
    let dir = tempfile::tempdir().unwrap();
    let errors = dir.path().join("errors.jsonl");
    let input = dir.path().join("input.jsonl");
    std::fs::write(&input, "4\n3\n8\n").unwrap();
    let plugin = env!("CARGO_BIN_EXE_pstream-fixtures");
    let output = run(Command::new(launcher())
        .args([
            "run", "--plugin", plugin, "-f", "halve", "--format", "jsonl",
        ])
        .arg("--input")
        .arg(&input)
        .arg("--errors")
        .arg(&errors));
    assert_eq!(output.status.code(), Some(1), "{}", report(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "2\n4\n");
    let records = std::fs::read_to_string(&errors).unwrap();
    assert_eq!(records.lines().count(), 1, "{records}");
    assert!(records.contains("3 is odd"), "{records}");

    std::fs::write(&input, "[2,3]\n[40,2]\n").unwrap();
    let output = run(Command::new(launcher())
        .args(["run", "--plugin", plugin, "-f", "add", "--format", "jsonl"])
        .arg("--input")
        .arg(&input));
    assert_eq!(output.status.code(), Some(0), "{}", report(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "5\n42\n");
}
