//! Workers on other machines, started for the pool: one **host agent** per host,
//! started over ssh or by Slurm's `srun`, spawns and supervises that host's workers,
//! which join the pool over TCP. [`HostLauncher`] says where and how; [`Agents`] are
//! the processes it started on this machine (`ssh`, `srun`), stopped and reaped
//! with the pool.
//!
//! An agent is `PLUGIN --agent --connect ADDR --until-stdin-ends [--workers N]`, and reads the job's
//! token as one line on its stdin: the token is never on a command line (where
//! `ps` on either machine would show it) nor in the environment. Its stdin stays
//! open while the pool lives; closing it tells the agent to stop.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pstream_protocol::auth::Token;
use pstream_protocol::MAX_AGENT_WORKERS;

use crate::error::PoolError;

/// The ssh program and options used unless [`HostLauncher::ssh_command`] says
/// otherwise: `BatchMode` makes ssh fail at once, saying why, where it would ask
/// for a password or a host key confirmation (several hosts asking at once on one
/// terminal would be unanswerable).
pub const DEFAULT_SSH_COMMAND: &str = "ssh -o BatchMode=yes";

/// How long agents get to exit after they were told to stop, before their `ssh`
/// (or `srun`) is terminated.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How many of an agent's last output lines are kept for the message saying why
/// it failed.
const TAIL_LINES: usize = 8;

/// Where and how a pool starts host agents on other machines
/// ([`crate::PoolBuilder::launcher`]). Each agent spawns its host's workers, which
/// join the pool over TCP; the pool listens, chooses a fresh token (unless
/// [`crate::PoolBuilder::token_file`] names one) and writes it to each agent's
/// stdin.
///
/// ```no_run
/// # fn main() -> Result<(), pstream_coordinator::PoolError> {
/// use pstream_coordinator::{HostLauncher, ProcessPool}; // pstream::{…} in the pstream crate
///
/// // Four workers on node1, eight on node2, copied there first.
/// let hosts = HostLauncher::ssh(["node1", "node2:8"])?
///     .workers_per_host(4)
///     .ssh_command("ssh -p 2222 -l worker")?
///     .transfer(true);
/// let pool = ProcessPool::builder()
///     .program("./my-plugin")
///     .launcher(hosts)
///     .build()?; // waits for the first worker to join
/// # drop(pool);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct HostLauncher {
    kind: Kind,
    ssh: Vec<String>,
    transfer: bool,
    workers_per_host: Option<usize>,
}

#[derive(Debug, Clone)]
enum Kind {
    Ssh(Vec<SshHost>),
    Slurm,
}

/// One host of `--ssh`: what ssh is given, and its workers if `:N` said so.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SshHost {
    destination: String,
    workers: Option<usize>,
}

impl HostLauncher {
    /// Agents started over ssh, one per host: `host`, `user@host`, `host:N` (N
    /// workers there), `[IPv6]:N`. Each is started as `SSH host PLUGIN --agent
    /// --connect ADDR [--workers N]`, where SSH is [`DEFAULT_SSH_COMMAND`] or
    /// [`HostLauncher::ssh_command`]. A host whose ssh fails is named with what ssh
    /// said, and the job goes on with the others; `build` fails only when every
    /// host failed.
    ///
    /// # Errors
    /// [`PoolError::Config`] for a host that is empty or has a bad worker count.
    pub fn ssh<S: AsRef<str>>(
        hosts: impl IntoIterator<Item = S>,
    ) -> Result<HostLauncher, PoolError> {
        let hosts = hosts
            .into_iter()
            .map(|h| parse_host(h.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(HostLauncher {
            kind: Kind::Ssh(hosts),
            ssh: shell_split(DEFAULT_SSH_COMMAND).expect("the default ssh command splits"),
            transfer: false,
            workers_per_host: None,
        })
    }

    /// More ssh hosts, from a file with one `host[:N]` per line; blank lines and
    /// what follows a `#` are ignored.
    ///
    /// # Errors
    /// [`PoolError::Config`] if the file cannot be read, a line is not a host, or
    /// this is not an ssh launcher.
    pub fn ssh_hosts_file(mut self, path: impl AsRef<Path>) -> Result<HostLauncher, PoolError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            PoolError::Config(format!("read the hosts file {}: {e}", path.display()))
        })?;
        let Kind::Ssh(hosts) = &mut self.kind else {
            return Err(PoolError::Config(
                "a hosts file is for agents started over ssh".into(),
            ));
        };
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let host = parse_host(line).map_err(|e| {
                let why = match e {
                    PoolError::Config(why) => why,
                    other => other.to_string(),
                };
                PoolError::Config(format!("{}, line {}: {why}", path.display(), n + 1))
            })?;
            hosts.push(host);
        }
        Ok(self)
    }

    /// Agents started by Slurm, inside an allocation (`sbatch`, `salloc`): one per
    /// node of the job, with `srun --nodes=$SLURM_NNODES --ntasks-per-node=1
    /// --whole --input=all`: srun hands its stdin, the token, to every agent. Each
    /// agent starts as many workers as the job has CPUs on its node
    /// (`SLURM_CPUS_ON_NODE`) unless [`HostLauncher::workers_per_host`] says.
    /// `build` fails, saying to use `sbatch` or `salloc`, outside an allocation
    /// (no `SLURM_JOB_ID`).
    pub fn slurm() -> HostLauncher {
        HostLauncher {
            kind: Kind::Slurm,
            ssh: Vec::new(),
            transfer: false,
            workers_per_host: None,
        }
    }

    /// The ssh program and its options, as one string split like a shell splits
    /// words (quotes and backslashes; no variables, no globbing, no shell), as GNU
    /// parallel's `--ssh`: `"ssh -p 2222 -i ~/.ssh/job_key"`. Default
    /// [`DEFAULT_SSH_COMMAND`].
    ///
    /// # Errors
    /// [`PoolError::Config`] for an empty command or an unclosed quote.
    pub fn ssh_command(mut self, command: &str) -> Result<HostLauncher, PoolError> {
        let words = shell_split(command)
            .map_err(|e| PoolError::Config(format!("the ssh command `{command}`: {e}")))?;
        if words.is_empty() {
            return Err(PoolError::Config("the ssh command is empty".into()));
        }
        self.ssh = words;
        Ok(self)
    }

    /// Copy the worker program to each host first (through the same ssh command),
    /// into a private temporary directory there that is removed when the pool
    /// ends. Without it the program must be at the same path on every host.
    /// (ssh only: on a Slurm cluster the program is on a shared filesystem.)
    pub fn transfer(mut self, yes: bool) -> HostLauncher {
        self.transfer = yes;
        self
    }

    /// Workers on each host whose own count was not given (`host:N`). Default:
    /// the agent's: `SLURM_CPUS_ON_NODE` there, else its CPU count.
    pub fn workers_per_host(mut self, n: usize) -> HostLauncher {
        self.workers_per_host = Some(n);
        self
    }

    /// Check what can be checked before anything starts.
    pub(crate) fn check(&self) -> Result<(), PoolError> {
        if self.workers_per_host == Some(0) {
            return Err(PoolError::Config(
                "workers per host must be at least 1".into(),
            ));
        }
        if let Some(n) = self
            .workers_per_host
            .filter(|&n| n > MAX_AGENT_WORKERS as usize)
        {
            return Err(PoolError::Config(format!(
                "{n} workers per host: a host agent runs at most {MAX_AGENT_WORKERS}"
            )));
        }
        match &self.kind {
            Kind::Ssh(hosts) if hosts.is_empty() => Err(PoolError::Config(
                "no host to start workers on: give at least one ssh host".into(),
            )),
            Kind::Ssh(_) => Ok(()),
            Kind::Slurm if self.transfer => Err(PoolError::Config(
                "transfer works over ssh; on a Slurm cluster put the program on a shared \
                 filesystem (or copy it with sbcast first)"
                    .into(),
            )),
            Kind::Slurm => match std::env::var_os("SLURM_JOB_ID") {
                Some(_) => Ok(()),
                None => Err(PoolError::Config(SLURM_OUTSIDE.into())),
            },
        }
    }

    /// With [`HostLauncher::transfer`], `program` is copied to every host, made
    /// executable there and run: it must be a program this machine could run (a
    /// file, executable), or nothing starts. A text file given by mistake would
    /// otherwise run on every host as a shell script.
    pub(crate) fn check_program(&self, program: &Path) -> Result<(), PoolError> {
        if !self.transfer || !matches!(self.kind, Kind::Ssh(_)) {
            return Ok(());
        }
        use std::os::unix::fs::PermissionsExt;
        let bad = |why: String| {
            PoolError::Config(format!(
                "cannot transfer the program {} to the hosts: {why}; nothing was started",
                program.display()
            ))
        };
        let meta = std::fs::metadata(program).map_err(|e| bad(e.to_string()))?;
        if !meta.is_file() {
            return Err(bad("it is not a file".into()));
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o111 == 0 {
            return Err(bad(format!(
                "it is not executable (mode {mode:04o}), so it is no plugin"
            )));
        }
        Ok(())
    }

    /// The addresses the agents must reach this machine from (one per ssh host;
    /// one for Slurm's nodes, which share a network): what each address of this
    /// machine on the route there is, `None` where that is not known.
    pub(crate) fn routes(&self) -> Vec<Option<IpAddr>> {
        match &self.kind {
            Kind::Ssh(hosts) => hosts
                .iter()
                .map(|h| route_to(host_name(&h.destination)))
                .collect(),
            Kind::Slurm => vec![slurm_route()],
        }
    }

    /// Start the agents; each reaches the pool at `connect[i]` (one per
    /// [`HostLauncher::routes`] entry).
    pub(crate) fn start(
        &self,
        program: &Path,
        connect: &[String],
        token: &Token,
    ) -> Result<Agents, PoolError> {
        let shared = Arc::new(Shared::default());
        let token = format!("{}\n", token.to_hex());
        let mut agents = Vec::new();
        match &self.kind {
            Kind::Ssh(hosts) => {
                for (host, connect) in hosts.iter().zip(connect) {
                    let workers = host.workers.or(self.workers_per_host);
                    let plan = Plan {
                        name: host.destination.clone(),
                        ssh: Some((self.ssh.clone(), host.destination.clone())),
                        program: program.to_path_buf(),
                        transfer: self.transfer,
                        agent_args: agent_args(connect, workers),
                        token: token.clone(),
                    };
                    agents.push(Agent::start(plan, &shared)?);
                }
            }
            Kind::Slurm => {
                let plan = Plan {
                    name: "srun".into(),
                    ssh: None,
                    program: program.to_path_buf(),
                    transfer: false,
                    agent_args: agent_args(&connect[0], self.workers_per_host),
                    token,
                };
                agents.push(Agent::start(plan, &shared)?);
            }
        }
        Ok(Agents { agents, shared })
    }

    /// For messages: what starts the agents, and where.
    pub(crate) fn describe(&self) -> String {
        match &self.kind {
            Kind::Ssh(hosts) => {
                let names: Vec<&str> = hosts.iter().map(|h| h.destination.as_str()).collect();
                format!("agents started over ssh on {}", names.join(", "))
            }
            Kind::Slurm => "agents started by srun on the job's nodes".into(),
        }
    }
}

/// The error outside a Slurm allocation.
const SLURM_OUTSIDE: &str = "the slurm launcher runs inside a Slurm allocation, and \
     SLURM_JOB_ID is not set here: submit the job with `sbatch` (a script that runs \
     pstream-coord), or run it under `salloc -N NODES`";

fn agent_args(connect: &str, workers: Option<usize>) -> Vec<String> {
    // The pool closes the agent's stdin when the job is over: an agent that has
    // not joined by then exits at once.
    let mut args = vec![
        "--agent".to_string(),
        "--connect".into(),
        connect.to_string(),
        "--until-stdin-ends".into(),
    ];
    if let Some(n) = workers {
        args.push("--workers".into());
        args.push(n.to_string());
    }
    args
}

/// `host`, `user@host`, `host:N`, `[v6]`, `[v6]:N`; a bare IPv6 address (two
/// colons or more) has no count.
fn parse_host(spec: &str) -> Result<SshHost, PoolError> {
    let spec = spec.trim();
    let bad = |why: &str| PoolError::Config(format!("the host `{spec}`: {why}"));
    if spec.is_empty() {
        return Err(bad("empty (give host, user@host or host:WORKERS)"));
    }
    let (host, count) = if let Some(open) = spec.find('[') {
        let close = spec[open..]
            .find(']')
            .map(|c| open + c)
            .ok_or_else(|| bad("no closing `]`"))?;
        let host = format!("{}{}", &spec[..open], &spec[open + 1..close]);
        match &spec[close + 1..] {
            "" => (host, None),
            rest => match rest.strip_prefix(':') {
                Some(n) => (host, Some(n)),
                None => return Err(bad("expected `:WORKERS` after `]`")),
            },
        }
    } else if spec.matches(':').count() == 1 {
        let (host, n) = spec.split_once(':').expect("one colon");
        (host.to_string(), Some(n))
    } else {
        (spec.to_string(), None)
    };
    if host.is_empty() || host.ends_with('@') {
        return Err(bad("no host name"));
    }
    if host.starts_with('-') {
        return Err(bad(
            "a host name cannot start with `-` (ssh would read an option)",
        ));
    }
    if host.chars().any(|c| c.is_whitespace() || c == ',') {
        return Err(bad("a host name has no spaces or commas"));
    }
    let workers = match count {
        None => None,
        Some(n) => match n.parse::<usize>() {
            Ok(0) => return Err(bad("0 workers: give at least 1, or leave the host out")),
            Ok(n) if n > MAX_AGENT_WORKERS as usize => {
                return Err(bad(&format!(
                    "{n} workers: a host agent runs at most {MAX_AGENT_WORKERS}"
                )))
            }
            Ok(n) => Some(n),
            Err(_) => return Err(bad(&format!("`{n}` is not a number of workers"))),
        },
    };
    Ok(SshHost {
        destination: host,
        workers,
    })
}

/// The host part of an ssh destination (`user@host`).
fn host_name(destination: &str) -> &str {
    destination.rsplit('@').next().unwrap_or(destination)
}

/// This machine's address on the route to `host` (resolved here), if it resolves.
/// No packet is sent: a UDP socket's `connect` only picks the route.
pub(crate) fn route_to(host: &str) -> Option<IpAddr> {
    let target = (host, 22).to_socket_addrs().ok()?.next()?;
    let local: SocketAddr = if target.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).ok()?;
    socket.connect((target.ip(), 9)).ok()?;
    Some(socket.local_addr().ok()?.ip())
}

/// In a Slurm job: this machine's address on the route to the job's nodes (their
/// `NodeAddr`s, from `scontrol`), preferring one that is not a loopback address
/// (the route to this very node is through its loopback interface).
fn slurm_route() -> Option<IpAddr> {
    let nodes = std::env::var("SLURM_JOB_NODELIST").ok()?;
    let out = Command::new("scontrol")
        .args(["-o", "show", "node", &nodes])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let routes: Vec<IpAddr> = text
        .split_whitespace()
        .filter_map(|field| field.strip_prefix("NodeAddr="))
        .filter_map(route_to)
        .collect();
    routes
        .iter()
        .find(|ip| !ip.is_loopback())
        .or(routes.first())
        .copied()
}

/// Split `text` into words as a POSIX shell would, without expanding anything:
/// blanks separate words; `'…'` keeps everything; `"…"` keeps everything but
/// `\"`, `\\`, `\$` and `` \` ``; a backslash outside quotes keeps the next
/// character.
pub(crate) fn shell_split(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("a single quote is not closed".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err("a double quote is not closed".into()),
                        },
                        Some(c) => word.push(c),
                        None => return Err("a double quote is not closed".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') => {}
                    Some(c) => word.push(c),
                    None => return Err("a backslash ends the command".into()),
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// `word` quoted for a POSIX shell (the remote one ssh runs the command with).
fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// What one agent's thread does.
#[derive(Debug)]
struct Plan {
    /// The host as the user named it (or `srun`), for messages.
    name: String,
    /// The ssh command and destination; `None`: `srun`.
    ssh: Option<(Vec<String>, String)>,
    program: PathBuf,
    transfer: bool,
    agent_args: Vec<String>,
    /// The token line for the agent's stdin.
    token: String,
}

impl Plan {
    /// `ssh … host 'command'` for a remote shell command line.
    fn ssh(&self, remote: &str) -> Command {
        let (ssh, destination) = self.ssh.as_ref().expect("an ssh plan");
        let mut cmd = Command::new(&ssh[0]);
        cmd.args(&ssh[1..]).arg(destination).arg(remote);
        cmd
    }

    /// The command that starts the agent (`program`: its path on the host).
    fn agent(&self, program: &str) -> Command {
        match &self.ssh {
            Some(_) => {
                let mut line = format!("exec {}", shell_quote(program));
                for arg in &self.agent_args {
                    line.push(' ');
                    line.push_str(&shell_quote(arg));
                }
                self.ssh(&line)
            }
            None => {
                let nodes = std::env::var("SLURM_NNODES").unwrap_or_else(|_| "1".into());
                let mut cmd = Command::new("srun");
                cmd.arg(format!("--nodes={nodes}"))
                    .arg(format!("--ntasks={nodes}"))
                    .args([
                        "--ntasks-per-node=1",
                        "--whole",
                        "--input=all",
                        "--kill-on-bad-exit=0",
                        "--job-name=pstream-agents",
                    ])
                    .arg(program)
                    .args(&self.agent_args);
                cmd
            }
        }
    }
}

/// What the threads of all agents share.
#[derive(Debug, Default)]
struct Shared {
    state: Mutex<Vec<State>>,
    changed: Condvar,
}

/// One agent, as its thread reports it.
#[derive(Debug, Default, Clone)]
struct State {
    /// The process now running for it (copy, agent or cleanup), to signal.
    pid: Option<i32>,
    /// Told to stop.
    stopping: bool,
    /// Ended (and reaped) before it was told to stop: why.
    failed: Option<String>,
    /// Its thread is done.
    done: bool,
    /// Signalled by [`Agents::stop`]: it had not ended within [`STOP_GRACE`] of being
    /// told to (an ssh still connecting, say). ssh so stopped exits 255, which then
    /// says nothing about the host.
    signalled: bool,
}

/// One agent's entry in [`Shared`], as its thread updates it.
struct Slot<'a> {
    shared: &'a Shared,
    index: usize,
}

impl Slot<'_> {
    fn set(&self, update: &dyn Fn(&mut State)) {
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        update(&mut state[self.index]);
        self.shared.changed.notify_all();
    }

    fn stopping(&self) -> bool {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())[self.index].stopping
    }

    fn signalled(&self) -> bool {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())[self.index].signalled
    }
}

/// The agents of a pool: the `ssh`/`srun` processes on this machine.
#[derive(Debug)]
pub(crate) struct Agents {
    agents: Vec<Agent>,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Agent {
    index: usize,
    /// The agent's stdin: closed to tell it to stop.
    stdin: Arc<Mutex<Option<ChildStdin>>>,
    thread: Option<JoinHandle<()>>,
}

impl Agent {
    fn start(plan: Plan, shared: &Arc<Shared>) -> Result<Agent, PoolError> {
        let index = {
            let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            state.push(State::default());
            state.len() - 1
        };
        let stdin = Arc::new(Mutex::new(None));
        let thread = {
            let (shared, stdin) = (Arc::clone(shared), Arc::clone(&stdin));
            std::thread::Builder::new()
                .name(format!("pstream-agent-{index}"))
                .spawn(move || run_agent(plan, index, &shared, &stdin))
                .map_err(PoolError::Socket)?
        };
        Ok(Agent {
            index,
            stdin,
            thread: Some(thread),
        })
    }
}

impl Agents {
    /// Why every agent failed, if every one has (each reason names its host).
    pub(crate) fn all_failed(&self) -> Option<Vec<String>> {
        let state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        let reasons: Vec<String> = state.iter().filter_map(|s| s.failed.clone()).collect();
        (reasons.len() == state.len()).then_some(reasons)
    }

    /// The pool is ending: an agent that ends from now on (its workers told to
    /// exit) has not failed.
    pub(crate) fn ending(&self) {
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        for s in state.iter_mut() {
            s.stopping = true;
        }
    }

    /// Tell every agent to stop (its stdin closes), give them [`STOP_GRACE`] to
    /// exit, then terminate the `ssh`/`srun` processes left, and reap them all
    /// (and remove the copied programs).
    fn stop(&mut self) {
        self.ending();
        for agent in &self.agents {
            agent.stdin.lock().unwrap_or_else(|e| e.into_inner()).take();
        }
        let indexes: Vec<usize> = self.agents.iter().map(|a| a.index).collect();
        let deadline = Instant::now() + STOP_GRACE;
        let mut signal = Signal::SIGTERM;
        loop {
            let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            while indexes.iter().any(|&i| !state[i].done) && Instant::now() < deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                state = self
                    .shared
                    .changed
                    .wait_timeout(state, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            let left: Vec<i32> = indexes.iter().filter_map(|&i| state[i].pid).collect();
            if indexes.iter().all(|&i| state[i].done) {
                break;
            }
            for &i in &indexes {
                if !state[i].done {
                    state[i].signalled = true;
                }
            }
            drop(state);
            for pid in left {
                // Its process group: ssh and what it started (a ProxyCommand).
                let _ = kill(Pid::from_raw(-pid), signal);
            }
            signal = Signal::SIGKILL;
            let state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            let _ = self
                .shared
                .changed
                .wait_timeout(state, Duration::from_secs(2))
                .unwrap_or_else(|e| e.into_inner());
        }
        for agent in &mut self.agents {
            if let Some(thread) = agent.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An agent's thread: copy the program (with `transfer`), start the agent, hand
/// it the token, wait for it; report a failure; remove the copy. Processes are
/// started by this thread, which lives as long as they do: they die with it
/// (`PR_SET_PDEATHSIG`), so a coordinator killed outright leaves no ssh behind
/// (and the agents, their coordinator gone, end too).
fn run_agent(plan: Plan, index: usize, shared: &Shared, stdin: &Mutex<Option<ChildStdin>>) {
    let me = Slot { shared, index };
    let set = |update: &dyn Fn(&mut State)| me.set(update);
    let stopping = || me.stopping();
    let fail = |why: String| {
        let message = format!("pstream: host {}: {why}", plan.name);
        write_stderr(&format!("{message}\n"));
        tracing::warn!("{message}");
        set(&|s| s.failed = Some(format!("{}: {why}", plan.name)));
    };

    // The program, copied to the host first.
    let mut remote_dir = None;
    let program = if plan.transfer {
        match copy_program(&plan, &me) {
            Ok(dir) => {
                let name = plan
                    .program
                    .file_name()
                    .map_or("pstream-plugin".into(), |n| {
                        n.to_string_lossy().into_owned()
                    });
                let path = format!("{dir}/{name}");
                remote_dir = Some(dir);
                path
            }
            Err(why) => {
                if !stopping() {
                    fail(why);
                }
                set(&|s| s.done = true);
                return;
            }
        }
    } else {
        plan.program.to_string_lossy().into_owned()
    };

    if !stopping() {
        let mut cmd = plan.agent(&program);
        match run(
            &mut cmd,
            Input::Token(&plan.token),
            stdin,
            Some(&me),
            &plan.name,
        ) {
            Ok((status, tail)) if !stopping() => {
                fail(format!(
                    "{} exited before the job ended ({}){}",
                    if plan.ssh.is_some() { "ssh" } else { "srun" },
                    describe(status),
                    quote_tail(&tail)
                ));
            }
            // Ending: an agent told to stop exits 0 (or 1, its coordinator gone);
            // ssh's own failure (255: it never reached the host, a host down that
            // the job did not wait for) is still news.
            Ok(_) if me.signalled() => write_stderr(&format!(
                "pstream: host {}: {} stopped as the job ended (its agent had not ended \
                 {} s after it was told to)\n",
                plan.name,
                if plan.ssh.is_some() { "ssh" } else { "srun" },
                STOP_GRACE.as_secs()
            )),
            Ok((status, tail)) if status.code() == Some(255) => {
                fail(format!(
                    "{} failed ({}){}",
                    if plan.ssh.is_some() { "ssh" } else { "srun" },
                    describe(status),
                    quote_tail(&tail)
                ));
            }
            Ok(_) => {}
            Err(e) => fail(format!("start {}: {e}", shown(&cmd))),
        }
    }

    if let Some(dir) = remote_dir {
        let mut cmd = plan.ssh(&format!("rm -rf -- {}", shell_quote(&dir)));
        let no_stdin = Mutex::new(None);
        match run(&mut cmd, Input::Null, &no_stdin, None, &plan.name) {
            Ok((status, _)) if status.success() => {}
            Ok((status, tail)) => write_stderr(&format!(
                "pstream: host {}: could not remove the copied program in {dir} ({}){}\n",
                plan.name,
                describe(status),
                quote_tail(&tail)
            )),
            Err(e) => write_stderr(&format!(
                "pstream: host {}: could not remove the copied program in {dir}: {e}\n",
                plan.name
            )),
        }
    }
    set(&|s| {
        s.pid = None;
        s.done = true;
    });
}

/// Copy the program to a new private directory on the host through ssh; the
/// directory.
fn copy_program(plan: &Plan, me: &Slot<'_>) -> Result<String, String> {
    let name = plan
        .program
        .file_name()
        .map_or("pstream-plugin".into(), |n| {
            n.to_string_lossy().into_owned()
        });
    let file = std::fs::File::open(&plan.program).map_err(|e| {
        format!(
            "read the program {} to copy it: {e}",
            plan.program.display()
        )
    })?;
    let script = format!(
        "umask 077 && d=$(mktemp -d \"${{TMPDIR:-/tmp}}/pstream.XXXXXXXXXX\") && \
         cat > \"$d\"/{name} && chmod 700 \"$d\"/{name} && echo \"$d\"",
        name = shell_quote(&name)
    );
    let mut cmd = plan.ssh(&script);
    let no_stdin = Mutex::new(None);
    let mut stdout = Vec::new();
    let (status, tail) = run(
        &mut cmd,
        Input::File(file, &mut stdout),
        &no_stdin,
        Some(me),
        &plan.name,
    )
    .map_err(|e| format!("start {}: {e}", shown(&cmd)))?;
    let dir = String::from_utf8_lossy(&stdout).trim().to_string();
    if !status.success() || !dir.starts_with('/') {
        return Err(format!(
            "copying the program there failed ({}){}",
            describe(status),
            quote_tail(&tail)
        ));
    }
    Ok(dir)
}

/// What a process of an agent gets on its stdin.
enum Input<'a> {
    /// The token line; the pipe is kept open (in `stdin`) until the agent is told
    /// to stop.
    Token(&'a str),
    /// A file; its stdout is collected.
    File(std::fs::File, &'a mut Vec<u8>),
    /// Nothing.
    Null,
}

/// Start `cmd` (in a process group of its own, dying with this thread), feed it,
/// pass its output on to our stderr as `host: line`, reap it; its status and its
/// last lines.
fn run(
    cmd: &mut Command,
    input: Input<'_>,
    stdin: &Mutex<Option<ChildStdin>>,
    me: Option<&Slot<'_>>,
    name: &str,
) -> io::Result<(ExitStatus, Vec<String>)> {
    let set = |update: &dyn Fn(&mut State)| {
        if let Some(me) = me {
            me.set(update);
        }
    };
    let stopping = || me.is_some_and(Slot::stopping);
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (input, mut collect) = match input {
        Input::Token(token) => (Some(token), None),
        Input::File(file, out) => {
            cmd.stdin(Stdio::from(file)).stdout(Stdio::piped());
            (None, Some(out))
        }
        Input::Null => {
            cmd.stdin(Stdio::null());
            (None, None)
        }
    };
    if input.is_some() {
        cmd.stdin(Stdio::piped());
    }
    if collect.is_none() {
        // Never our stdout: it may be the job's output.
        cmd.stdout(Stdio::from(write_end.try_clone()?));
    }
    cmd.stderr(Stdio::from(write_end));
    // Its own group, a clean slate of signals (pstream-coord blocks SIGINT, SIGTERM
    // and SIGHUP for its signal thread, and ssh would inherit the mask and then not
    // end on SIGTERM), death with the thread that starts it.
    pstream_worker::spawn::child_rules(cmd, false, Vec::new(), None);
    let spawned = cmd.spawn();
    // The command holds our copies of the pipe's write end: only the child's may
    // remain, or the pipe would never end.
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .stdin(Stdio::null());
    let mut child: Child = spawned?;
    let pid = child.id() as i32;
    set(&|s| s.pid = Some(pid));
    if let (Some(token), Some(mut pipe)) = (input, child.stdin.take()) {
        // One line, far below a pipe's buffer: it cannot block. An agent that died
        // at once makes this fail: its exit says why.
        let _ = pipe.write_all(token.as_bytes());
        let _ = pipe.flush();
        // Under the lock that `Agents::stop` takes after it marked every agent
        // stopping: either it finds the pipe here, or the pipe is closed now.
        let mut held = stdin.lock().unwrap_or_else(|e| e.into_inner());
        if !stopping() {
            *held = Some(pipe);
        }
    }
    let collector = child.stdout.take().map(|mut out| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = out.read_to_end(&mut bytes);
            bytes
        })
    });
    // Our stderr gets each line, with the host's name.
    let mut tail = VecDeque::new();
    let reader = BufReader::new(std::fs::File::from(read_end));
    for line in reader.split(b'\n').map_while(Result::ok) {
        let line = String::from_utf8_lossy(&line).trim_end().to_string();
        write_stderr(&format!("{name}: {line}\n"));
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    let status = child.wait()?;
    if let (Some(out), Some(thread)) = (collect.as_mut(), collector) {
        **out = thread.join().unwrap_or_default();
    }
    stdin.lock().unwrap_or_else(|e| e.into_inner()).take();
    set(&|s| s.pid = None);
    Ok((status, tail.into()))
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => match Signal::try_from(signal) {
            Ok(s) => format!("killed by {}", s.as_str()),
            Err(_) => format!("killed by signal {signal}"),
        },
        _ => status.to_string(),
    }
}

fn quote_tail(tail: &[String]) -> String {
    let lines: Vec<&str> = tail
        .iter()
        .map(String::as_str)
        .filter(|l| !l.trim().is_empty())
        .collect();
    if lines.is_empty() {
        String::new()
    } else {
        format!(": {}", lines.join(" / "))
    }
}

/// A command as a shell would show it, for messages.
fn shown(cmd: &Command) -> String {
    let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
    words.extend(cmd.get_args().map(|a| shell_quote(&a.to_string_lossy())));
    words.join(" ")
}

fn write_stderr(text: &str) {
    let _ = io::stderr().lock().write_all(text.as_bytes());
}

/// The addresses each agent is told to connect to: the listener's, where it is a
/// specific one; where it listens on every address, this machine's address on
/// the route to each host (or, not knowing it, this machine's name).
pub(crate) fn connect_addresses(listening: SocketAddr, routes: &[Option<IpAddr>]) -> Vec<String> {
    let port = listening.port();
    let name = || {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into())
    };
    routes
        .iter()
        .map(|route| {
            let ip = if listening.ip().is_unspecified() {
                *route
            } else {
                Some(listening.ip())
            };
            match ip {
                Some(ip) => SocketAddr::new(ip, port).to_string(),
                None => format!("{}:{port}", name()),
            }
        })
        .collect()
}

/// Where to listen when not told: the one address of this machine on the routes
/// to every host, or every address (of the hosts' family) when the routes differ
/// or are not all known.
pub(crate) fn listen_address(routes: &[Option<IpAddr>]) -> SocketAddr {
    let known: Vec<IpAddr> = routes.iter().flatten().copied().collect();
    match known.first() {
        Some(&first) if known.len() == routes.len() && known.iter().all(|&ip| ip == first) => {
            SocketAddr::new(first, 0)
        }
        Some(IpAddr::V6(_)) if known.iter().all(IpAddr::is_ipv6) => {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        }
        _ => ([0, 0, 0, 0], 0).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_parse_with_and_without_counts() {
        let h = |s| parse_host(s).map(|h| (h.destination, h.workers));
        assert_eq!(h("node1").unwrap(), ("node1".into(), None));
        assert_eq!(h("node2:8").unwrap(), ("node2".into(), Some(8)));
        assert_eq!(h("me@node3:2").unwrap(), ("me@node3".into(), Some(2)));
        assert_eq!(h("[fe80::1]:4").unwrap(), ("fe80::1".into(), Some(4)));
        assert_eq!(h("me@[::1]").unwrap(), ("me@::1".into(), None));
        assert_eq!(h("fe80::1").unwrap(), ("fe80::1".into(), None));
        assert!(h("node:0").is_err());
        assert_eq!(h("node:4096").unwrap(), ("node".into(), Some(4096)));
        assert!(h("node:100000000")
            .unwrap_err()
            .to_string()
            .contains("a host agent runs at most 4096"));
        assert!(h("node:x").is_err());
        assert!(h("").is_err());
        assert!(h(":4").is_err());
        assert!(h("-oProxyCommand=x").is_err());
        assert!(h("[::1").is_err());
        let many = HostLauncher::ssh(["node"])
            .unwrap()
            .workers_per_host(100_000_000);
        assert!(many
            .check()
            .unwrap_err()
            .to_string()
            .contains("100000000 workers per host: a host agent runs at most 4096"));
    }

    /// A bad line of a hosts file is named by the file and line, once: the error
    /// used to read `invalid pool configuration: hosts.txt, line 2: invalid pool
    /// configuration: the host ...`, and quoted the host with the spaces the line
    /// had around it.
    #[test]
    fn a_bad_line_of_a_hosts_file_is_named_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts.txt");
        std::fs::write(&path, "node1\r\n  node2 node3  # two on a line\n").unwrap();
        let e = HostLauncher::ssh(["node0"])
            .unwrap()
            .ssh_hosts_file(&path)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "invalid pool configuration: {}, line 2: the host `node2 node3`: a host \
                 name has no spaces or commas",
                path.display()
            )
        );
        let e = parse_host(" node:x ").unwrap_err().to_string();
        assert!(e.contains("the host `node:x`:"), "{e}");
    }

    #[test]
    fn commands_split_like_a_shell() {
        let s = |t| shell_split(t).unwrap();
        assert_eq!(s("ssh"), ["ssh"]);
        assert_eq!(
            s("  ssh -p 2222\t-i key "),
            ["ssh", "-p", "2222", "-i", "key"]
        );
        assert_eq!(
            s("ssh -o 'ProxyCommand=nc %h %p'"),
            ["ssh", "-o", "ProxyCommand=nc %h %p"]
        );
        assert_eq!(
            s(r#"a "b \"c\" \$d \x" e\ f"#),
            ["a", r#"b "c" $d \x"#, "e f"]
        );
        assert_eq!(s("a ''"), ["a", ""]);
        assert!(s("").is_empty());
        assert!(shell_split("ssh 'open").is_err());
        assert!(shell_split("ssh \"open").is_err());
        assert!(shell_split("ssh \\").is_err());
    }

    #[test]
    fn remote_words_are_quoted_for_the_remote_shell() {
        assert_eq!(shell_quote("/usr/bin/plugin"), "/usr/bin/plugin");
        assert_eq!(shell_quote("10.0.0.1:7077"), "10.0.0.1:7077");
        assert_eq!(shell_quote("my plugin"), "'my plugin'");
        assert_eq!(shell_quote("it's;rm"), r"'it'\''s;rm'");
        assert_eq!(shell_quote(""), "''");
        // What the remote shell makes of it: the words back.
        let words = ["a b", "it's", "$HOME", "x;y", ""];
        let line: Vec<String> = words.iter().map(|w| shell_quote(w)).collect();
        assert_eq!(shell_split(&line.join(" ")).unwrap(), words);
    }

    #[test]
    fn the_listen_address_is_the_route_when_all_hosts_share_it() {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "192.168.1.5".parse().unwrap();
        assert_eq!(listen_address(&[Some(a), Some(a)]), SocketAddr::new(a, 0));
        assert_eq!(listen_address(&[Some(a), Some(b)]).to_string(), "0.0.0.0:0");
        assert_eq!(listen_address(&[Some(a), None]).to_string(), "0.0.0.0:0");
        let listening: SocketAddr = "0.0.0.0:7077".parse().unwrap();
        let addrs = connect_addresses(listening, &[Some(a), Some(b)]);
        assert_eq!(addrs, ["10.0.0.1:7077", "192.168.1.5:7077"]);
        let listening: SocketAddr = "10.0.0.1:7077".parse().unwrap();
        assert_eq!(connect_addresses(listening, &[Some(b)]), ["10.0.0.1:7077"]);
    }

    #[test]
    fn a_route_to_this_machine_is_found() {
        assert_eq!(route_to("127.0.0.1"), Some("127.0.0.1".parse().unwrap()));
    }
}
