//! The shell-command scenario (9): `pstream-coord exec` and `pstream-coord pipe`
//! against GNU parallel and `xargs -P` with the same number of jobs, each
//! contender one `sh -c` command timed from spawn to exit, in interleaved rounds,
//! every output checked (the same machinery as scenario 7, `cli`).
//!
//! * 9a. `exec true` over 20,000 items: the cost of a command per item.
//! * 9b. `exec echo {}` over 20,000 items: the same with an output per item,
//!   in order (parallel `-k`; `xargs -P` cannot keep order and is checked sorted).
//! * 9c. `pipe` awk doubling over `seq 1 20000000`, against `parallel --pipe`.
//!
//! Each exec table has a floor row: the command run per item straight from the
//! bench process (`posix_spawn` and wait, J at a time, output not read), and each
//! scenario prints every contender's CPU time per item (user + system of its whole
//! process tree), which load barely changes, unlike the times.
//!
//! The sizes can be made smaller for a smoke test with `PSTREAM_BENCH_SHELL_ITEMS`
//! and `PSTREAM_BENCH_SHELL_LINES`.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::cli::{
    expected_doubles, find_coord, gnu_parallel, print_commands, print_peers, run_capture,
    run_digest, run_timed, sh_quote, sorted_lines, version_line, Peer,
};
use crate::report::{count, median, ratio, Summary};
use crate::{BoxError, Settings};

/// `exec` ÷ GNU parallel, and ÷ `xargs -P`, throughput.
const EXEC_VS_PARALLEL: f64 = 3.0;
const EXEC_VS_XARGS: f64 = 1.5;
/// `pipe` ÷ `parallel --pipe` throughput.
const PIPE_VS_PARALLEL: f64 = 2.0;
/// The block size of both `pipe` contenders (each one's default, said anyway).
const BLOCK: &str = "1M";

fn size(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

pub fn shell_scenario(s: &Settings, summary: &mut Summary) -> Result<(), BoxError> {
    println!("## 9. Shell commands: `pstream-coord exec` and `pipe` vs GNU parallel and xargs");
    println!();
    let coord = match find_coord() {
        Ok(c) => c,
        Err(why) => {
            println!(
                "- skipped: {why}; run `cargo build --release -p pstream-coord` \
                 (`just bench` builds it) and run the bench again"
            );
            println!();
            return Ok(());
        }
    };
    let items = size(
        "PSTREAM_BENCH_SHELL_ITEMS",
        if s.quick { 2_000 } else { 20_000 },
    );
    let lines = size(
        "PSTREAM_BENCH_SHELL_LINES",
        if s.quick { 2_000_000 } else { 20_000_000 },
    );
    println!(
        "Every contender runs {} jobs at once (`-j{}`, one per CPU), is one shell command \
         run with `sh -c`, timed from spawn to exit, and has its output checked.",
        s.workers, s.workers
    );
    println!();
    let coord = sh_quote(&coord.to_string_lossy());
    exec_scenario(s, summary, &coord, items, "true", "")?;
    exec_scenario(s, summary, &coord, items, "echo", " {}")?;
    pipe_scenario(s, summary, &coord, lines)?;
    Ok(())
}

/// `seq 1 n` as the lines it prints.
fn seq_text(n: u64) -> Vec<u8> {
    let mut v = Vec::new();
    for i in 1..=n {
        v.extend_from_slice(i.to_string().as_bytes());
        v.push(b'\n');
    }
    v
}

/// The CPU time (user + system) of this process's waited-for children so far.
fn children_cpu() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_CHILDREN).map_or(0.0, |u| {
        let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
        t(u.user_time()) + t(u.system_time())
    })
}

/// `run_timed`, and the CPU time of the whole command tree (every process of it
/// is waited for by its parent, so it adds up in ours): unlike the wall-clock
/// time, barely changed by what else runs on the machine.
fn run_timed_cpu(script: &str) -> Result<(f64, f64), String> {
    let before = children_cpu();
    let t = run_timed(script)?;
    Ok((t, children_cpu() - before))
}

/// The floor of a command per item on this machine: `program ITEM` for items
/// 1..=`items`, started straight from this process (`std`'s `posix_spawn`, the
/// PATH searched as by `xargs`) and waited for, `j` at a time, stdout to
/// /dev/null; the wall-clock and the CPU seconds.
fn bare_spawn(program: &str, items: u64, j: usize) -> Result<(f64, f64), String> {
    let next = AtomicU64::new(1);
    let before = children_cpu();
    let start = Instant::now();
    std::thread::scope(|scope| {
        let runners: Vec<_> = (0..j.max(1))
            .map(|_| {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i > items {
                        return Ok(());
                    }
                    let status = Command::new(program)
                        .arg(i.to_string())
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .status()
                        .map_err(|e| format!("could not run {program}: {e}"))?;
                    if !status.success() {
                        return Err(format!("{program} {i} failed: {status}"));
                    }
                })
            })
            .collect();
        runners
            .into_iter()
            .try_for_each(|r| r.join().expect("a spawning thread panicked"))
    })?;
    Ok((start.elapsed().as_secs_f64(), children_cpu() - before))
}

/// The floor's row, its CPU times, and how to run it once.
type Floor<'a> = (
    &'a mut Peer,
    &'a mut Vec<f64>,
    &'a dyn Fn() -> Result<(f64, f64), String>,
);

/// Check every contender's output once (round 0, also a warm-up), then time
/// `s.runs` interleaved rounds, with the floor (`bare_spawn`) if given.
fn measure(
    s: &Settings,
    peers: &mut [&mut Peer],
    mut floor: Option<Floor<'_>>,
    cpu: &mut [Vec<f64>],
    check: impl Fn(&str, &[u8]) -> Option<String>,
) -> Result<(), BoxError> {
    for p in peers.iter_mut() {
        if !p.runs() {
            continue;
        }
        match run_capture(&p.script) {
            Ok((_, out)) => {
                if let Some(why) = check(&p.name, &out) {
                    p.mark_wrong(why);
                }
            }
            Err(why) => p.skipped = Some(why),
        }
    }
    if !peers[0].runs() {
        return Err(format!(
            "pstream-coord failed: {}",
            peers[0].skipped.as_deref().unwrap_or("")
        )
        .into());
    }
    for _ in 0..s.runs {
        for (p, cpu) in peers.iter_mut().zip(cpu.iter_mut()) {
            if !p.runs() {
                continue;
            }
            match run_timed_cpu(&format!("{} > /dev/null", p.script)) {
                Ok((t, c)) => {
                    p.times.push(t);
                    cpu.push(c);
                }
                Err(why) => p.skipped = Some(why),
            }
        }
        if let Some((p, cpu, run)) = &mut floor {
            if p.runs() {
                match run() {
                    Ok((t, c)) => {
                        p.times.push(t);
                        cpu.push(c);
                    }
                    Err(why) => p.skipped = Some(why),
                }
            }
        }
    }
    Ok(())
}

/// A line per contender: its CPU time per `what` (`per` of them in a round;
/// median over the rounds).
fn print_cpu(what: &str, per: f64, rows: &[(&Peer, &[f64])]) {
    println!(
        "CPU time per {what} (user + system of every process of the contender, commands \
         included; median of the rounds; load-independent, unlike the times above):"
    );
    println!();
    for (p, cpu) in rows {
        if p.runs() && !cpu.is_empty() {
            println!("- {}: {:.3} ms", p.name, median(cpu) * 1e3 / per);
        }
    }
    println!();
}

/// 9a and 9b: a command per item.
fn exec_scenario(
    s: &Settings,
    summary: &mut Summary,
    coord: &str,
    items: u64,
    program: &str,
    args: &str,
) -> Result<(), BoxError> {
    let j = s.workers;
    let what = format!("{program}{args}");
    println!(
        "### 9{}. A command per item: `{what}` over {} items",
        if program == "true" { 'a' } else { 'b' },
        count(items)
    );
    println!();
    let feed = format!("seq 1 {items} | ");
    let mut ps = Peer::new(
        "pstream-coord exec",
        format!("{feed}pstream-coord exec --workers {j} -- {what}"),
        format!("{feed}{coord} exec --workers {j} -- {what}"),
    );
    let mut par = match gnu_parallel() {
        Ok(v) => {
            let cmd = format!("{feed}parallel --will-cite -k -j{j} {what}");
            Peer::new(format!("{v} `-k`"), cmd.clone(), cmd)
        }
        Err(why) => Peer::skipped("GNU parallel", why),
    };
    let mut xargs = match version_line("xargs", &["--version"]) {
        Some(v) => {
            let cmd = format!("{feed}xargs -P{j} -n1 {program}");
            Peer::new(format!("{v} `-P{j} -n1` (unordered)"), cmd.clone(), cmd)
        }
        None => Peer::skipped("xargs", "xargs is not installed"),
    };
    let mut floor = Peer::new(
        format!("floor: bare `posix_spawn` + wait, {j} at a time (output not read)"),
        format!("(in the bench process: `{program} ITEM` per item, {j} threads)"),
        "",
    );
    let bare = || bare_spawn(program, items, j);
    print_commands(&[&ps, &par, &xargs, &floor]);
    let mut cpu = vec![Vec::new(); 3];
    let mut floor_cpu = Vec::new();
    let want: Vec<u8> = if program == "echo" {
        seq_text(items)
    } else {
        Vec::new()
    };
    let floor_run: Floor<'_> = (&mut floor, &mut floor_cpu, &bare);
    measure(
        s,
        &mut [&mut ps, &mut par, &mut xargs],
        Some(floor_run),
        &mut cpu,
        |name, out| {
            let same = if name.contains("unordered") {
                sorted_lines(out) == sorted_lines(&want)
            } else {
                out == want
            };
            (!same).then(|| format!("{} bytes of output, expected {}", out.len(), want.len()))
        },
    )?;
    print_peers(
        summary,
        (
            &format!("shell-exec-{program}"),
            &format!("a command per item: {what} over {} items", count(items)),
        ),
        "items/s",
        items,
        None,
        &[&ps, &par, &xargs, &floor],
        &ps,
    );
    print_cpu(
        "item",
        items as f64,
        &[
            (&ps, &cpu[0]),
            (&par, &cpu[1]),
            (&xargs, &cpu[2]),
            (&floor, &floor_cpu),
        ],
    );
    let vs_par = par.slowdown_vs(&ps);
    let vs_xargs = xargs.slowdown_vs(&ps);
    if par.runs() {
        println!(
            "- pstream-coord exec / GNU parallel throughput: **{}** (target ≥ {EXEC_VS_PARALLEL}×)",
            ratio(vs_par)
        );
    }
    if xargs.runs() {
        println!(
            "- pstream-coord exec / `xargs -P{j}` throughput: **{}** (target ≥ {EXEC_VS_XARGS}×)",
            ratio(vs_xargs)
        );
    }
    println!();
    summary.add(
        &format!("shell exec {what}: pstream-coord ÷ GNU parallel"),
        ratio(vs_par),
        "≥ 3×",
        par.runs()
            .then_some(vs_par >= EXEC_VS_PARALLEL && ps.wrong.is_none()),
    );
    summary.add(
        &format!("shell exec {what}: pstream-coord ÷ xargs -P{j}"),
        ratio(vs_xargs),
        "≥ 1.5×",
        xargs
            .runs()
            .then_some(vs_xargs >= EXEC_VS_XARGS && ps.wrong.is_none()),
    );
    Ok(())
}

/// 9c: awk over blocks of lines.
fn pipe_scenario(s: &Settings, summary: &mut Summary, coord: &str, n: u64) -> Result<(), BoxError> {
    let j = s.workers;
    println!(
        "### 9c. Blocks of lines through a command: awk doubling `seq 1 {n}` ({} lines)",
        count(n)
    );
    println!();
    let feed = format!("seq 1 {n} | ");
    let mut ps = Peer::new(
        "pstream-coord pipe",
        format!("{feed}pstream-coord pipe --workers {j} --block {BLOCK} -- awk '{{print $1*2}}'"),
        format!("{feed}{coord} pipe --workers {j} --block {BLOCK} -- awk '{{print $1*2}}'"),
    );
    let mut par = match gnu_parallel() {
        Ok(v) => {
            // parallel runs its command with a shell: the quotes must survive it.
            let cmd = format!(
                "{feed}parallel --will-cite --pipe --block {BLOCK} --keep-order -j{j} \"awk '{{print \\$1*2}}'\""
            );
            Peer::new(format!("{v} `--pipe -k`"), cmd.clone(), cmd)
        }
        Err(why) => Peer::skipped("GNU parallel `--pipe`", why),
    };
    let mut awk = match version_line("awk", &["-W", "version"]) {
        Some(v) => {
            let cmd = format!("{feed}awk '{{print $1*2}}'");
            Peer::new(format!("one `awk` ({v})"), cmd.clone(), cmd)
        }
        None => Peer::skipped("one `awk`", "awk is not installed"),
    };
    print_commands(&[&ps, &par, &awk]);
    // Checked by digest: the outputs are large.
    let (want, want_len) = expected_doubles(n);
    for p in [&mut ps, &mut par, &mut awk] {
        if !p.runs() {
            continue;
        }
        match run_digest(&p.script) {
            Ok((got, _)) if got == want => {}
            Ok((_, len)) => p.mark_wrong(format!(
                "output differs from `2\\n4\\n…` ({len} bytes, expected {want_len})"
            )),
            Err(why) => p.skipped = Some(why),
        }
    }
    if !ps.runs() {
        return Err(format!(
            "pstream-coord pipe failed: {}",
            ps.skipped.as_deref().unwrap_or("")
        )
        .into());
    }
    let mut cpu = vec![Vec::new(); 3];
    for _ in 0..s.runs {
        for (p, cpu) in [&mut ps, &mut par, &mut awk]
            .into_iter()
            .zip(cpu.iter_mut())
        {
            if !p.runs() {
                continue;
            }
            match run_timed_cpu(&format!("{} > /dev/null", p.script)) {
                Ok((t, c)) => {
                    p.times.push(t);
                    cpu.push(c);
                }
                Err(why) => p.skipped = Some(why),
            }
        }
    }
    print_peers(
        summary,
        (
            "shell-pipe",
            &format!("pipe: awk doubling {} lines", count(n)),
        ),
        "lines/s",
        n,
        None,
        &[&ps, &par, &awk],
        &ps,
    );
    print_cpu(
        "million lines",
        n as f64 / 1e6,
        &[(&ps, &cpu[0]), (&par, &cpu[1]), (&awk, &cpu[2])],
    );
    let vs_par = par.slowdown_vs(&ps);
    if par.runs() {
        println!(
            "- pstream-coord pipe / GNU parallel --pipe throughput: **{}** (target ≥ {PIPE_VS_PARALLEL}×)",
            ratio(vs_par)
        );
    }
    if awk.runs() {
        println!(
            "- pstream-coord pipe / one awk: **{}**",
            ratio(awk.slowdown_vs(&ps))
        );
    }
    println!();
    summary.add(
        "shell pipe awk: pstream-coord ÷ GNU parallel --pipe",
        ratio(vs_par),
        "≥ 2×",
        par.runs()
            .then_some(vs_par >= PIPE_VS_PARALLEL && ps.wrong.is_none()),
    );
    Ok(())
}
