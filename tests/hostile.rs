//! Hostile and broken peers: whatever connects to the pool's socket, and whatever
//! bytes arrive on either side, the job goes on exactly or stops with a clear error.

mod support;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pstream::protocol::{
    read_frame, write_frame, Frame, Hello, Items, Message, ENV_SOCKET, ENV_TOKEN, PROTOCOL_VERSION,
};
use pstream::PoolError;
use pstream_examples::{double, sha256_bytes, Blob};
use sha2::Digest;
use support::*;

/// What the pool answered a foreign peer: never a Welcome.
fn assert_refused(mut stream: UnixStream, what: &str) {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    match read_frame(&mut stream, 1 << 20) {
        Ok(Some(Frame {
            message: Message::Reject { reason },
            ..
        })) => eprintln!("{what}: rejected: {reason}"),
        Ok(None) => eprintln!("{what}: closed"),
        Err(e) => eprintln!("{what}: connection ended: {e}"),
        Ok(Some(other)) => panic!("{what}: the pool answered {:?}", other.message),
    }
}

fn hello(token: &str) -> Message {
    Message::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        token: token.into(),
        pid: std::process::id(),
        capacity: 10,
        max_frame: 1 << 20,
        functions: vec![],
    })
}

#[test]
fn the_door_is_private_and_foreign_peers_are_refused_while_a_job_runs() {
    let pool = builder()
        .workers(2)
        .handshake_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let socket = pool.socket_path().to_path_buf();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(socket.parent().unwrap()), 0o700);
    assert_eq!(mode(&socket), 0o600);

    let n = scale(300_000) as i64;
    let mut results = pool.map(double, 0..n).unwrap();
    let mut expected = 0i64;
    let mut take = |k: i64, results: &mut pstream::MapResults<i64>| {
        for _ in 0..k {
            assert_eq!(results.next().unwrap().unwrap(), expected * 2);
            expected += 1;
        }
    };
    take(1000, &mut results);

    // A wrong token.
    let mut s = UnixStream::connect(&socket).unwrap();
    // The door may refuse (and close) before the Hello is even written.
    let _ = write_frame(
        &mut s,
        &hello("0123456789abcdef0123456789abcdef"),
        &Items::new(),
        1 << 20,
    );
    assert_refused(s, "wrong token");
    take(1000, &mut results);

    // No Hello at all: dropped after the handshake timeout.
    let s = UnixStream::connect(&socket).unwrap();
    assert_refused(s, "no hello");
    take(1000, &mut results);

    // Garbage.
    let mut s = UnixStream::connect(&socket).unwrap();
    // The door may refuse (and close) before the bytes are even written.
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: pstream\r\n\r\n");
    assert_refused(s, "garbage");

    // A length prefix of 4 GiB, then silence.
    let mut s = UnixStream::connect(&socket).unwrap();
    let _ = s.write_all(&u32::MAX.to_le_bytes());
    assert_refused(s, "4 GiB prefix");

    for result in results {
        assert_eq!(result.unwrap(), expected * 2);
        expected += 1;
    }
    assert_eq!(expected, n);
    assert_eq!(pool.stats().crashes, 0);
    assert_eq!(pool.worker_pids().len(), 2);
}

#[test]
fn a_plugin_of_another_protocol_version_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("marker");
    let err = builder()
        .workers(1)
        .env(
            "PSTREAM_EXAMPLES_EVIL",
            format!("other-version:{}", marker.display()),
        )
        .build()
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, PoolError::WorkerStart { .. }), "{text}");
    assert!(
        text.contains(&format!("version {}", PROTOCOL_VERSION + 1)),
        "{text}"
    );
    assert!(
        text.contains(&format!("version {PROTOCOL_VERSION}")),
        "{text}"
    );
    assert!(text.contains("rebuild"), "{text}");
}

#[test]
fn a_hundred_mib_item_is_an_item_error_unless_the_limit_is_raised() {
    let big = Blob(vec![7u8; 100 << 20]);
    let expected: [u8; 32] = sha2::Sha256::digest(&big.0).into();

    let pool = builder().workers(1).build().unwrap();
    let results: Vec<_> = pool
        .map(
            sha256_bytes,
            vec![Blob(b"small".to_vec()), big.clone(), Blob(vec![])],
        )
        .unwrap()
        .collect();
    assert!(results[0].is_ok());
    let err = results[1].as_ref().unwrap_err();
    assert_eq!(err.index, 1);
    assert_eq!(err.kind.name(), "too_large", "{err}");
    assert!(
        results[2].is_ok(),
        "the stream goes on after a too large item"
    );
    drop(pool);

    let pool = builder().workers(1).max_frame(256 << 20).build().unwrap();
    let digest = pool
        .map(sha256_bytes, vec![big])
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(digest, expected);
}

/// Start the plugin as a worker of a fake coordinator: our own socket.
fn fake_coordinator() -> (std::process::Child, UnixStream, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("socket");
    let listener = UnixListener::bind(&path).unwrap();
    let child = Command::new(plugin())
        .env(ENV_SOCKET, &path)
        .env(ENV_TOKEN, "feedfacefeedfacefeedfacefeedface")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut stream, _) = listener.accept().unwrap();
    let hello = read_frame(&mut stream, 1 << 20).unwrap().unwrap();
    assert!(
        matches!(hello.message, Message::Hello(_)),
        "{:?}",
        hello.message
    );
    (child, stream, dir)
}

/// Wait for the worker to exit; it must do so non-zero, within a second, saying why.
fn assert_exits_with_message(mut child: std::process::Child, since: Instant, expect: &str) {
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if since.elapsed() > Duration::from_secs(1) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the worker did not exit within a second");
        }
        std::thread::yield_now();
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains(expect), "stderr: {stderr}");
}

#[test]
fn a_coordinator_sending_garbage_makes_the_worker_exit_with_a_message() {
    let (child, mut stream, _dir) = fake_coordinator();
    stream.write_all(&[0xff; 64]).unwrap();
    assert_exits_with_message(child, Instant::now(), "failed to serve");
}

#[test]
fn a_coordinator_vanishing_mid_frame_makes_the_worker_exit_with_a_message() {
    let (child, mut stream, _dir) = fake_coordinator();
    stream.write_all(&100u32.to_le_bytes()).unwrap();
    stream.write_all(&[1, 2, 3]).unwrap();
    drop(stream);
    assert_exits_with_message(child, Instant::now(), "inside a frame");
}
