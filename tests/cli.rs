//! End-to-end tests of the `pstream-coord` launcher: they run the built binary over
//! real processes, real pipes and real signals.

use std::process::Command;

fn coord() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pstream-coord"))
}

#[test]
fn functions_lists_the_built_in_examples() {
    let out = coord().arg("functions").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("double"));
}
