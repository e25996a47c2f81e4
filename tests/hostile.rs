//! Hostile and broken peers: whatever connects to the pool's socket, and whatever
//! bytes arrive on either side, the job goes on exactly or stops with a clear error.

mod support;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pstream::protocol::auth::{Role, Token};
use pstream::protocol::{
    read_frame, write_frame, Frame, Hello, Items, Message, ENV_COORDINATOR_PID, ENV_SOCKET,
    ENV_TOKEN_FD, PROTOCOL_VERSION,
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

fn hello() -> Message {
    Message::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        pid: std::process::id(),
        nonce: [7; 32],
        agent: None,
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

    // A Hello from a process the pool did not start.
    let mut s = UnixStream::connect(&socket).unwrap();
    // The door may refuse (and close) before the Hello is even written.
    let _ = write_frame(&mut s, &hello(), &Items::new(), 1 << 20);
    assert_refused(s, "a stranger's hello");
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

/// Build a pool of one worker that misbehaves in `mode` during the handshake; the
/// build must fail (within a deadline) and name why. Returns the error's text.
fn refused_at_handshake(mode: &str, handshake_timeout: Duration) -> String {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("marker");
    let builder = builder()
        .workers(1)
        .handshake_timeout(handshake_timeout)
        .env(
            "PSTREAM_EXAMPLES_EVIL",
            format!("{mode}:{}", marker.display()),
        );
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(builder.build());
    });
    let built = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{mode}: build() did not return within 60 s"));
    assert!(marker.exists(), "{mode}: the evil worker did not run");
    match built {
        Ok(pool) => panic!(
            "{mode}: the pool accepted the worker {:?}",
            pool.worker_pids()
        ),
        Err(err) => {
            let text = err.to_string();
            assert!(
                matches!(err, PoolError::WorkerStart { .. }),
                "{mode}: {text}"
            );
            assert!(
                text.contains("failed the handshake") || mode == "silent",
                "{text}"
            );
            text
        }
    }
}

#[test]
fn a_worker_with_a_wrong_token_is_refused() {
    // The evil worker proves with another token than the one its coordinator gave.
    let text = refused_at_handshake("wrong-proof", Duration::from_secs(20));
    assert!(
        text.contains("failed to prove that it holds the job's token (a wrong token)"),
        "{text}"
    );
}

#[test]
fn a_worker_that_claims_another_pid_is_refused() {
    let text = refused_at_handshake("other-pid", Duration::from_secs(20));
    assert!(text.contains("Hello claims pid"), "{text}");
    assert!(text.contains("but the socket's peer is pid"), "{text}");
}

#[test]
fn a_worker_that_connects_and_says_nothing_is_refused_at_the_deadline() {
    let text = refused_at_handshake("silent", Duration::from_secs(1));
    assert!(
        text.contains("did not complete the handshake within 1s"),
        "{text}"
    );
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

/// The token the fake coordinators below give their worker.
const TOKEN: &str = "feedfacefeedfacefeedfacefeedfacefeedfacefeedfacefeedfacefeedface";

/// A listening socket in a private directory, as a coordinator makes it.
fn private_socket() -> (tempfile::TempDir, std::path::PathBuf, UnixListener) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let path = dir.path().join("socket");
    let listener = UnixListener::bind(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    (dir, path, listener)
}

/// Start the plugin as a coordinator would, told that its coordinator is
/// `coordinator` and listens on `path`.
fn summon(path: &std::path::Path, coordinator: u32) -> std::process::Child {
    let mut cmd = Command::new(plugin());
    cmd.env(ENV_SOCKET, path)
        .env(ENV_COORDINATOR_PID, coordinator.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    give_token(&mut cmd, TOKEN);
    cmd.spawn().unwrap()
}

/// Pass `token` to the child as a coordinator does: on a pipe that only this child
/// inherits, named by `PSTREAM_TOKEN_FD`.
fn give_token(cmd: &mut Command, token: &str) {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
    std::fs::File::from(write)
        .write_all(token.as_bytes())
        .unwrap();
    let read = std::sync::Arc::new(read);
    cmd.env(ENV_TOKEN_FD, read.as_raw_fd().to_string());
    // SAFETY: between fork and exec the closure only calls fcntl, which is
    // async-signal-safe; the pipe stays open in the parent as long as `cmd` holds it.
    unsafe {
        cmd.pre_exec(move || {
            fcntl(&*read, FcntlArg::F_SETFD(FdFlag::empty()))?;
            Ok(())
        });
    }
}

/// Accept the worker's connection, failing the test if it does not come in time.
fn accept(listener: &UnixListener) -> UnixStream {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(30)))
                    .unwrap();
                return stream;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "the worker did not connect");
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// Start the plugin as a worker of a fake coordinator (our own socket, our pid),
/// and take its Hello.
fn fake_coordinator() -> (std::process::Child, UnixStream, Hello, tempfile::TempDir) {
    let (dir, path, listener) = private_socket();
    let child = summon(&path, std::process::id());
    let mut stream = accept(&listener);
    let hello = match read_frame(&mut stream, 1 << 20).unwrap().unwrap().message {
        Message::Hello(hello) => hello,
        other => panic!("{other:?}"),
    };
    (child, stream, hello, dir)
}

/// Answer the worker's Hello as a coordinator holding `token` would.
fn challenge(stream: &mut UnixStream, hello: &Hello, token: &Token) -> [u8; 32] {
    let nonce = [0x42; 32];
    let proof = token.prove(Role::Coordinator, &hello.nonce, &nonce);
    let message = Message::Challenge { nonce, proof };
    write_frame(stream, &message, &Items::new(), 1 << 20).unwrap();
    nonce
}

/// Complete the handshake as the worker's real coordinator would.
fn welcome(stream: &mut UnixStream, hello: &Hello) {
    let token = Token::from_hex(TOKEN).unwrap();
    let nonce = challenge(stream, hello, &token);
    match read_frame(stream, 1 << 20).unwrap().unwrap().message {
        Message::Join(join) => {
            assert!(token.verify(Role::Worker, &hello.nonce, &nonce, &join.proof))
        }
        other => panic!("{other:?}"),
    }
    let welcome = Message::Welcome {
        worker_id: 0,
        max_frame: 1 << 20,
        flush_interval_us: 2000,
        heartbeat_ms: 0,
        silence_ms: 0,
        spin_us: 0,
    };
    write_frame(stream, &welcome, &Items::new(), 1 << 20).unwrap();
}

/// Wait, with a deadline, for the child to exit; return its code and stderr.
fn exit_of(mut child: std::process::Child) -> (Option<i32>, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the worker did not exit");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status.code(), stderr)
}

/// Everything the worker sent on `stream` until it closed it (or went quiet for the
/// stream's read timeout).
fn rest(mut stream: UnixStream) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = stream.read(&mut buf) {
        bytes.extend_from_slice(&buf[..n]);
    }
    bytes
}

/// Whether the token shows in `bytes`, as text or as its bytes.
fn shows_token(bytes: &[u8]) -> bool {
    let raw = [0xfe, 0xed, 0xfa, 0xce, 0xfe, 0xed, 0xfa, 0xce];
    bytes
        .windows(8)
        .any(|w| w == raw || w == &TOKEN.as_bytes()[..8])
}

#[test]
fn a_worker_tells_nothing_to_a_socket_its_coordinator_does_not_listen_on() {
    // The socket looks right (this user's, private), but the process listening on it
    // is this test, not the pid the worker was given: somebody swapped the socket.
    let (_dir, path, listener) = private_socket();
    let mut real = Command::new("sleep").arg("60").spawn().unwrap();
    let mut child = summon(&path, real.id());
    // It may connect (to learn who listens), but it must say nothing at all.
    listener.set_nonblocking(true).unwrap();
    let mut conn: Option<UnixStream> = None;
    let mut said = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let exited = loop {
        if conn.is_none() {
            if let Ok((stream, _)) = listener.accept() {
                stream.set_nonblocking(true).unwrap();
                conn = Some(stream);
            }
        }
        if let Some(stream) = &mut conn {
            let mut buf = [0u8; 4096];
            if let Ok(n) = stream.read(&mut buf) {
                said.extend_from_slice(&buf[..n]);
            }
        }
        if !said.is_empty() || child.try_wait().unwrap().is_some() || Instant::now() > deadline {
            break child.try_wait().unwrap().is_some();
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = real.kill();
    let _ = real.wait();
    if !exited {
        let _ = child.kill();
    }
    let (code, stderr) = exit_of(child);
    if let Some(stream) = conn {
        stream.set_nonblocking(false).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        said.extend(rest(stream));
    }
    assert!(
        said.is_empty(),
        "the worker sent {} bytes to an impostor (the token among them: {})",
        said.len(),
        shows_token(&said)
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "pid {}, not the coordinator (pid {})",
            std::process::id(),
            real.id()
        )),
        "{stderr}"
    );
}

#[test]
fn a_worker_proves_nothing_to_a_coordinator_that_cannot_prove_the_token() {
    // The process at the other end passes every check of the socket, but does not
    // know the token: the worker gets no proof of it, and gives none.
    let (child, mut stream, hello, _dir) = fake_coordinator();
    challenge(&mut stream, &hello, &Token::random().unwrap());
    let said = rest(stream);
    assert!(
        said.is_empty(),
        "after a wrong proof the worker still sent {} bytes",
        said.len()
    );
    let (code, stderr) = exit_of(child);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("could not prove that it holds the job's token"),
        "{stderr}"
    );
}

#[test]
fn a_worker_refuses_a_socket_other_users_may_reach() {
    let check = |dir_mode: u32, socket_mode: u32, owner: Option<u32>, expect: &str| {
        let (dir, path, listener) = private_socket();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(dir_mode)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(socket_mode)).unwrap();
        if let Some(uid) = owner {
            nix::unistd::chown(dir.path(), Some(nix::unistd::Uid::from_raw(uid)), None).unwrap();
        }
        let (code, stderr) = exit_of(summon(&path, std::process::id()));
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains(expect), "{stderr}");
        // It did not even connect.
        listener.set_nonblocking(true).unwrap();
        assert!(listener.accept().is_err(), "the worker connected");
    };
    check(0o755, 0o600, None, "has mode 0755: other users may use it");
    check(0o700, 0o666, None, "has mode 0666: other users may use it");
    if nix::unistd::geteuid().is_root() {
        check(0o700, 0o600, Some(65534), "belongs to uid 65534");
    } else {
        eprintln!("not root: the case of another user's directory is not tried");
    }
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
    let (child, mut stream, hello, _dir) = fake_coordinator();
    welcome(&mut stream, &hello);
    stream.write_all(&[0xff; 64]).unwrap();
    assert_exits_with_message(child, Instant::now(), "failed to serve");
}

#[test]
fn a_coordinator_vanishing_mid_frame_makes_the_worker_exit_with_a_message() {
    let (child, mut stream, hello, _dir) = fake_coordinator();
    welcome(&mut stream, &hello);
    stream.write_all(&100u32.to_le_bytes()).unwrap();
    stream.write_all(&[1, 2, 3]).unwrap();
    drop(stream);
    assert_exits_with_message(child, Instant::now(), "inside a frame");
}

#[test]
fn the_token_is_in_no_worker_environment() {
    // A function's child processes can read their worker's /proc/<pid>/environ, which
    // keeps the environment the worker was started with, whatever it removed since.
    let pool = builder().workers(2).build().unwrap();
    let doubled: Vec<i64> = pool
        .map(double, 0..100i64)
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(doubled, (0..100).map(|x| x * 2).collect::<Vec<_>>());
    let pids = pool.worker_pids();
    assert_eq!(pids.len(), 2);
    for pid in pids {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let mut token_fd = None;
        for entry in environ.split(|&b| b == 0) {
            let entry = String::from_utf8_lossy(entry);
            let (name, value) = entry.split_once('=').unwrap_or((&entry, ""));
            assert_ne!(name, "PSTREAM_TOKEN", "worker {pid}: {entry}");
            let secret_like = value.len() >= 32 && value.bytes().all(|b| b.is_ascii_hexdigit());
            assert!(!secret_like, "worker {pid}: {entry}");
            if name == ENV_TOKEN_FD {
                token_fd = Some(value.to_string());
            }
        }
        // The pipe it came on is closed once read.
        let fd = token_fd.unwrap_or_else(|| panic!("worker {pid}: no {ENV_TOKEN_FD}"));
        if let Ok(target) = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")) {
            assert!(
                !target.to_string_lossy().starts_with("pipe:"),
                "worker {pid} still holds the token's pipe: {}",
                target.display()
            );
        }
    }
}

#[test]
fn a_plugin_started_by_hand_with_a_stray_socket_variable_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("socket");
    let out = Command::new(plugin())
        .env(ENV_SOCKET, &socket)
        .env("PSTREAM_TOKEN", TOKEN)
        .env(ENV_COORDINATOR_PID, std::process::id().to_string())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("was not started by a pstream coordinator"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{ENV_TOKEN_FD} is not set")),
        "{stderr}"
    );
}
