//! Starting a command the way `posix_spawn` does (a child that shares the worker's
//! memory, the worker suspended until it has executed the program: no copy of the
//! worker's page tables, no copy-on-write faults after it), with the one step
//! `posix_spawn` cannot take: the child registers its process group with the
//! keeper before it executes the program (see `worker`).
//!
//! `std::process::Command` takes that path only without a `pre_exec` closure, and
//! forks otherwise: measured on 2 CPUs, the fork cost about a fifth of the CPU time
//! of a command per item (`exec -- true`: 2.0 ms of CPU per item forked, 1.6 ms
//! spawned this way; a bare `posix_spawn` of `true` from a small C program, 1.0 ms).

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::OnceLock;

use nix::libc;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// The stack of the child before it executes the program: the system calls below,
/// and glibc's `execvpe`, which puts the PATH search's buffer and, for a script
/// without `#!`, the argv of `/bin/sh` on the stack (both added to this).
const CHILD_STACK: usize = 64 << 10;

/// A started command: its pid and the worker's ends of its pipes.
pub struct Child {
    pub pid: i32,
    pub stdin: Option<File>,
    pub stdout: File,
    pub stderr: File,
}

/// What the child needs, all prepared by the worker: the child shares the
/// worker's memory and must not allocate (another thread may hold the allocator's
/// lock).
#[repr(C)]
struct ChildArgs {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    /// The descriptors that become the child's 0, 1 and 2.
    stdio: [RawFd; 3],
    /// The keeper's pipe, or -1.
    keeper: RawFd,
    /// The errno of the step that failed, set by the child before it exits.
    error: libc::c_int,
}

/// The child: registered, in its own process group, its stdio in place, every
/// signal's disposition and mask as a fresh program expects (as `std` leaves
/// them: handlers back to the default, SIGPIPE too, nothing blocked; other ignored
/// signals stay ignored), then the program.
extern "C" fn child(arg: *mut libc::c_void) -> libc::c_int {
    let args = arg.cast::<ChildArgs>();
    // SAFETY: `arg` points to the `ChildArgs` of `spawn`, whose frame is alive and
    // suspended until this child executes or exits (CLONE_VFORK); every pointer in
    // it is valid for as long. Only async-signal-safe system calls are made, on
    // memory prepared by the parent; nothing allocates. Signals are blocked on
    // entry (the parent blocked them all before clone), so no handler runs here.
    unsafe {
        let fail = |args: *mut ChildArgs| -> ! {
            std::ptr::write_volatile(&raw mut (*args).error, *libc::__errno_location());
            libc::_exit(127)
        };
        for signal in 1..libc::SIGRTMAX() + 1 {
            let mut old = MaybeUninit::<libc::sigaction>::zeroed();
            if libc::sigaction(signal, std::ptr::null(), old.as_mut_ptr()) != 0 {
                continue;
            }
            let handler = old.assume_init().sa_sigaction;
            if signal == libc::SIGPIPE || (handler != libc::SIG_DFL && handler != libc::SIG_IGN) {
                let mut default = MaybeUninit::<libc::sigaction>::zeroed().assume_init();
                default.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(signal, &default, std::ptr::null_mut());
            }
        }
        if libc::setpgid(0, 0) != 0 {
            fail(args);
        }
        if (*args).keeper >= 0 {
            // 4 bytes: atomic on a pipe.
            let pid = libc::getpid().to_le_bytes();
            libc::write((*args).keeper, pid.as_ptr().cast(), pid.len());
        }
        for (target, &fd) in (*args).stdio.iter().enumerate() {
            let target = target as RawFd;
            let done = if fd == target {
                libc::fcntl(fd, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, target)
            };
            if done == -1 {
                fail(args);
            }
        }
        let mut none = MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(none.as_mut_ptr());
        if libc::sigprocmask(libc::SIG_SETMASK, none.as_ptr(), std::ptr::null_mut()) != 0 {
            fail(args);
        }
        libc::execvpe((*args).program, (*args).argv, (*args).envp);
        fail(args)
    }
}

/// The workers' environment for the commands: theirs without `remove`, read once.
fn environment(remove: &str) -> &'static [CString] {
    static ENV: OnceLock<Vec<CString>> = OnceLock::new();
    ENV.get_or_init(|| {
        std::env::vars_os()
            .filter(|(k, _)| k != remove)
            .filter_map(|(k, v)| {
                let mut kv = k.into_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                CString::new(kv).ok()
            })
            .collect()
    })
}

fn c_string(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "an argument holds a NUL byte, which no argument can",
        )
    })
}

/// `/dev/null`, opened once.
fn dev_null() -> io::Result<&'static File> {
    static NULL: OnceLock<File> = OnceLock::new();
    if let Some(f) = NULL.get() {
        return Ok(f);
    }
    let f = File::open("/dev/null")?;
    Ok(NULL.get_or_init(|| f))
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

/// Start `argv` (its program at `program` if given, else looked up in PATH as
/// `execvp` does) with the workers' environment without `env_remove`, in a
/// process group of its own, its stdin a pipe (`piped_stdin`) or `/dev/null`, its
/// stdout and stderr pipes; its pid written to `keeper` before it starts.
pub fn spawn(
    argv: &[OsString],
    program: Option<&std::path::Path>,
    env_remove: &str,
    piped_stdin: bool,
    keeper: Option<RawFd>,
) -> io::Result<Child> {
    let args: Vec<CString> = argv.iter().map(|a| c_string(a)).collect::<Result<_, _>>()?;
    let program = match program {
        Some(p) => c_string(p.as_os_str())?,
        None => args[0].clone(),
    };
    let mut argv_ptrs: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let env = environment(env_remove);
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());

    let (stdin_child, stdin_ours) = if piped_stdin {
        let (r, w) = pipe()?;
        (Some(r), Some(File::from(w)))
    } else {
        (None, None)
    };
    let null = dev_null()?;
    let (stdout_ours, stdout_child) = pipe()?;
    let (stderr_ours, stderr_child) = pipe()?;
    let mut child_args = ChildArgs {
        program: program.as_ptr(),
        argv: argv_ptrs.as_ptr(),
        envp: envp.as_ptr(),
        stdio: [
            stdin_child
                .as_ref()
                .map_or(null.as_raw_fd(), AsRawFd::as_raw_fd),
            stdout_child.as_raw_fd(),
            stderr_child.as_raw_fd(),
        ],
        keeper: keeper.unwrap_or(-1),
        error: 0,
    };
    // The PATH search's buffer and a script's argv for /bin/sh, on its stack.
    let path_len = std::env::var_os("PATH").map_or(0, |p| p.len());
    let size = CHILD_STACK + path_len + 8 * (argv_ptrs.len() + 2);
    let mut stack: Vec<MaybeUninit<u8>> = Vec::with_capacity(size);
    // The stack grows down from its end, 16-byte aligned.
    let top = (stack.as_mut_ptr() as usize + size) & !15;

    let mut all = MaybeUninit::<libc::sigset_t>::uninit();
    let mut old = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigfillset initialises `all`; pthread_sigmask reads it and writes the
    // old mask into `old`, which is then initialised.
    let blocked = unsafe {
        libc::sigfillset(all.as_mut_ptr());
        libc::pthread_sigmask(libc::SIG_SETMASK, all.as_ptr(), old.as_mut_ptr())
    };
    if blocked != 0 {
        return Err(io::Error::from_raw_os_error(blocked));
    }
    // SAFETY: `child` runs on `stack` (allocated, `size` bytes, unused by anything
    // else, alive until after this returns: CLONE_VFORK suspends this thread until
    // the child has executed the program or exited) with `child_args`, which
    // outlives it likewise. Every signal is blocked in this thread meanwhile, so the
    // child, which shares this memory (CLONE_VM), starts with them blocked and runs
    // no handler. SIGCHLD: its end is reported as a child's.
    let pid = unsafe {
        libc::clone(
            child,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&raw mut child_args).cast(),
        )
    };
    let clone_error = io::Error::last_os_error();
    // SAFETY: `old` was initialised by the pthread_sigmask above.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, old.as_ptr(), std::ptr::null_mut());
    }
    drop(stack);
    drop((stdin_child, stdout_child, stderr_child));
    if pid == -1 {
        return Err(clone_error);
    }
    // SAFETY: the child has executed the program or exited (CLONE_VFORK): nothing
    // writes `child_args` any more.
    let error = unsafe { std::ptr::read_volatile(&raw const child_args.error) };
    if error != 0 {
        reap(pid)?;
        return Err(io::Error::from_raw_os_error(error));
    }
    Ok(Child {
        pid,
        stdin: stdin_ours,
        stdout: File::from(stdout_ours),
        stderr: File::from(stderr_ours),
    })
}

/// Wait for `pid` to end, and reap it.
pub fn reap(pid: i32) -> io::Result<ExitStatus> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes the status into `status`.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            return Ok(ExitStatus::from_raw(status));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// What a command wrote: its stdout and its stderr.
pub type Output = (Vec<u8>, Vec<u8>);

/// Whether a command's end is a failure: a signal or a non-zero exit.
fn failed(status: &ExitStatus) -> bool {
    status.signal().is_some() || status.code() != Some(0)
}

/// A descriptor that becomes readable when process `pid` (our unreaped child)
/// ends, or `None` if the kernel has no `pidfd_open` (before 5.3).
fn pidfd(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1;
    // nothing of ours is passed by pointer.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = RawFd::try_from(fd).ok().filter(|&fd| fd >= 0)?;
    // SAFETY: the descriptor was just made for us and nothing else owns it.
    Some(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Read the command `pid`'s `stdout` and `stderr` to their ends, both at once (a
/// command that fills one pipe while the other is read would otherwise wait
/// forever), and reap it. A command that fails (a signal, a non-zero exit) takes
/// its process group along as soon as it ends: what it left running neither
/// outlives the item nor holds its output open, which would keep the reading
/// waiting for good. (Its end is seen through a pidfd in the same `poll`, no
/// thread; without pidfds, it is reaped after its output ends, as before.) On a
/// read error the group is killed and the command reaped.
pub fn read_and_reap(
    stdout: &mut File,
    stderr: &mut File,
    pid: i32,
) -> (io::Result<Output>, io::Result<ExitStatus>) {
    let kill_group = || {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let (mut out_open, mut err_open) = (true, true);
    let mut ended = pidfd(pid);
    let mut status: Option<io::Result<ExitStatus>> = None;
    let mut chunk = vec![0u8; 64 << 10];
    while out_open || err_open {
        let mut fds = Vec::with_capacity(3);
        if out_open {
            fds.push(PollFd::new(stdout.as_fd(), PollFlags::POLLIN));
        }
        if err_open {
            fds.push(PollFd::new(stderr.as_fd(), PollFlags::POLLIN));
        }
        if let Some(fd) = &ended {
            fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                drop(fds);
                kill_group();
                return (Err(e.into()), reap(pid));
            }
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        let mut ready = ready.into_iter();
        for (open, pipe, buf) in [
            (&mut out_open, &mut *stdout, &mut out),
            (&mut err_open, &mut *stderr, &mut err),
        ] {
            if *open && ready.next() == Some(true) {
                match pipe.read(&mut chunk) {
                    Ok(0) => *open = false,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        kill_group();
                        return (Err(e), status.unwrap_or_else(|| reap(pid)));
                    }
                }
            }
        }
        if ended.is_some() && ready.next() == Some(true) {
            ended = None;
            let reaped = reap(pid);
            if reaped.as_ref().is_ok_and(failed) {
                kill_group();
            }
            status = Some(reaped);
        }
    }
    let status = match status {
        Some(reaped) => reaped,
        None => reap(pid),
    };
    (Ok((out, err)), status)
}
