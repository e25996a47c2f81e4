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
//! bench process (`posix_spawnp` and wait, J at a time, output not read). The
//! pipe table has two: the input split in two on a line boundary and two awks
//! run at once, one per half, from files written before the clock starts, and
//! from two `seq`s of half the range each; and `seq` alone. Each scenario prints
//! every contender's CPU time per item (user + system of its whole process
//! tree), which load barely changes, unlike the times, and a ceiling line: the
//! floor against the tool the target names, measured and by CPU ÷ cores.
//!
//! The sizes can be made smaller for a smoke test with `PSTREAM_BENCH_SHELL_ITEMS`
//! and `PSTREAM_BENCH_SHELL_LINES`.

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

/// The length of `seq 1 n`'s output.
fn n_text_len(n: u64) -> u64 {
    let (mut len, mut low) = (0, 1u64);
    while low <= n {
        let high = (low * 10 - 1).min(n);
        len += (high - low + 1) * (low.to_string().len() as u64 + 1);
        low *= 10;
    }
    len
}

/// Write `seq from to`'s lines to `path`.
fn write_seq(path: &std::path::Path, from: u64, to: u64) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    for i in from..=to {
        writeln!(out, "{i}")?;
    }
    out.flush()
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
/// 1..=`items`, started straight from this process and waited for, `j` at a
/// time, stdin and stdout `/dev/null`; the wall-clock and the CPU seconds.
///
/// Nothing is done per item but the start and the wait: glibc's `posix_spawnp`
/// (a child that shares this process's memory, `CLONE_VM | CLONE_VFORK`, the
/// start `pstream-coord exec` makes too, and cheaper than the `fork` of `xargs`),
/// the PATH searched as by `xargs`, `/dev/null` opened once, the environment
/// prepared once, the output not read (reading it costs a pipe per item, which
/// any runner that keeps outputs pays and this floor does not).
fn bare_spawn(program: &str, items: u64, j: usize) -> Result<(f64, f64), String> {
    use nix::spawn::{posix_spawnp, PosixSpawnAttr, PosixSpawnFileActions};
    use nix::sys::wait::{waitpid, WaitStatus};
    use std::ffi::CString;
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStringExt;

    let null = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("could not open /dev/null: {e}"))?;
    let env: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend(v.into_vec());
            CString::new(kv).ok()
        })
        .collect();
    let path = CString::new(program).map_err(|e| e.to_string())?;
    let next = AtomicU64::new(1);
    let before = children_cpu();
    let start = Instant::now();
    std::thread::scope(|scope| {
        let runners: Vec<_> = (0..j.max(1))
            .map(|_| {
                scope.spawn(|| -> Result<(), String> {
                    let fail = |e: nix::Error| format!("could not run {program}: {e}");
                    let mut actions = PosixSpawnFileActions::init().map_err(fail)?;
                    actions.add_dup2(null.as_raw_fd(), 0).map_err(fail)?;
                    actions.add_dup2(null.as_raw_fd(), 1).map_err(fail)?;
                    let attr = PosixSpawnAttr::init().map_err(fail)?;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i > items {
                            return Ok(());
                        }
                        let item = CString::new(i.to_string()).expect("digits");
                        let pid = posix_spawnp(&path, &actions, &attr, &[&path, &item], &env)
                            .map_err(fail)?;
                        let status = loop {
                            match waitpid(pid, None) {
                                Err(nix::errno::Errno::EINTR) => continue,
                                other => break other,
                            }
                        };
                        if !matches!(status, Ok(WaitStatus::Exited(_, 0))) {
                            return Err(format!("{program} {i} failed: {status:?}"));
                        }
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
        format!("floor: bare `posix_spawnp` + wait, {j} at a time (output not read)"),
        format!(
            "(in the bench process: `{program} ITEM` per item, glibc posix_spawnp, {j} threads)"
        ),
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
    if xargs.runs() && floor.runs() && !floor.times.is_empty() {
        // The ceiling: what a runner that did nothing but start the commands
        // would reach against xargs, measured, and by the CPU time it needs.
        let floor_vs_xargs = xargs.slowdown_vs(&floor);
        let cpu_item = median(&floor_cpu) / items as f64;
        let least = cpu_item * items as f64 / j as f64;
        let needed = median(&xargs.times) / EXEC_VS_XARGS;
        println!(
            "- ceiling: the floor / `xargs -P{j}` throughput: **{}** (the most a runner of \
             one process per item reaches here, doing nothing but start and wait for them); \
             by CPU: {:.3} ms per item × {} items ÷ {j} cores ≥ {} of wall-clock, where \
             {EXEC_VS_XARGS}× xargs needs ≤ {}{}",
            ratio(floor_vs_xargs),
            cpu_item * 1e3,
            count(items),
            crate::report::secs(least),
            crate::report::secs(needed),
            if least > needed || floor_vs_xargs < EXEC_VS_XARGS {
                ": the target cannot be met on this machine"
            } else {
                ""
            }
        );
        if !cpu[2].is_empty() {
            // Load-independent: where xargs keeps the cores busy (a quiet
            // machine), no runner beats it by more than its CPU per item over
            // the least a command costs.
            let xargs_item = median(&cpu[2]) / items as f64;
            println!(
                "- ceiling by CPU per item: xargs's {:.3} ms ÷ the floor's {:.3} ms = **{}** \
                 (on a quiet machine, where xargs keeps the cores busy, the most any runner \
                 reaches against it; target {EXEC_VS_XARGS}×)",
                xargs_item * 1e3,
                cpu_item * 1e3,
                ratio(xargs_item / cpu_item),
            );
        }
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
    // The floors: the least any runner of j jobs could take. The input cut in
    // two on a line boundary (the first half of the lines and the second), and
    // two awks run at once, one per half, their output to /dev/null (a runner
    // must also collect the outputs and put them in order; these do not):
    // from files written before the clock starts (no producer, no pipe in), and
    // from two `seq`s of half the range each (the input made as the contenders'
    // is, and through a pipe, but without the runner's own pipe hop).
    let dir = tempfile::Builder::new()
        .prefix("pstream-bench-shell-")
        .tempdir()?;
    let half = n / 2;
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    write_seq(&first, 1, half)?;
    write_seq(&second, half + 1, n)?;
    let (first, second) = (
        sh_quote(&first.to_string_lossy()),
        sh_quote(&second.to_string_lossy()),
    );
    let doubling = "awk '{print $1*2}'";
    let floor_of = |name: String, shown: String, halves: [String; 2]| {
        let script = format!(
            "{} > /dev/null & {} > /dev/null & wait",
            halves[0], halves[1]
        );
        (Peer::new(name, shown, script), halves)
    };
    let (mut floor_files, files_halves) = floor_of(
        "floor: two awks at once, one per half, from files (split before the clock)".into(),
        format!(
            "{doubling} < FIRST_HALF > /dev/null & {doubling} < SECOND_HALF > /dev/null & wait"
        ),
        [
            format!("{doubling} < {first}"),
            format!("{doubling} < {second}"),
        ],
    );
    let (mut floor_seq, seq_halves) = floor_of(
        "floor: two `seq | awk` at once, one per half of the range".into(),
        format!(
            "seq 1 {half} | {doubling} > /dev/null & seq {} {n} | {doubling} > /dev/null & wait",
            half + 1
        ),
        [
            format!("seq 1 {half} | {doubling}"),
            format!("seq {} {n} | {doubling}", half + 1),
        ],
    );
    let mut seq_alone = Peer::new(
        "`seq` alone (the input, to /dev/null)",
        format!("seq 1 {n}"),
        format!("seq 1 {n}"),
    );
    if !awk.runs() {
        floor_files.skipped = awk.skipped.clone();
        floor_seq.skipped = awk.skipped.clone();
    }
    print_commands(&[&ps, &par, &awk, &floor_files, &floor_seq, &seq_alone]);
    // Checked by digest: the outputs are large. A floor is checked with its two
    // awks run at once, each into a file, the files then concatenated.
    let check_floor = |halves: &[String; 2], tag: &str| {
        let (a, b) = (
            sh_quote(&dir.path().join(format!("{tag}.out1")).to_string_lossy()),
            sh_quote(&dir.path().join(format!("{tag}.out2")).to_string_lossy()),
        );
        format!(
            "{} > {a} & {} > {b} & wait && cat {a} {b} && rm {a} {b}",
            halves[0], halves[1]
        )
    };
    let checks = [
        ps.script.clone(),
        par.script.clone(),
        awk.script.clone(),
        check_floor(&files_halves, "files"),
        check_floor(&seq_halves, "seq"),
    ];
    let (want, want_len) = expected_doubles(n);
    for (p, check) in [
        &mut ps,
        &mut par,
        &mut awk,
        &mut floor_files,
        &mut floor_seq,
    ]
    .into_iter()
    .zip(&checks)
    {
        if !p.runs() {
            continue;
        }
        match run_digest(check) {
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
    match run_digest(&seq_alone.script) {
        Ok((_, len)) if len == n_text_len(n) => {}
        Ok((_, len)) => seq_alone.mark_wrong(format!("{len} bytes of output")),
        Err(why) => seq_alone.skipped = Some(why),
    }
    let mut cpu = vec![Vec::new(); 6];
    for _ in 0..s.runs {
        for (p, cpu) in [
            &mut ps,
            &mut par,
            &mut awk,
            &mut floor_files,
            &mut floor_seq,
            &mut seq_alone,
        ]
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
        &[&ps, &par, &awk, &floor_files, &floor_seq, &seq_alone],
        &ps,
    );
    print_cpu(
        "million lines",
        n as f64 / 1e6,
        &[
            (&ps, &cpu[0]),
            (&par, &cpu[1]),
            (&awk, &cpu[2]),
            (&floor_files, &cpu[3]),
            (&floor_seq, &cpu[4]),
            (&seq_alone, &cpu[5]),
        ],
    );
    drop(dir);
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
    if par.runs() {
        // The ceiling: the floors against GNU parallel, measured, and by the CPU
        // time the awks and seq need whoever runs them.
        for (floor, cpu) in [(&floor_files, &cpu[3]), (&floor_seq, &cpu[4])] {
            if !floor.runs() || floor.times.is_empty() {
                continue;
            }
            let vs = par.slowdown_vs(floor);
            let least = median(cpu) / j as f64;
            let needed = median(&par.times) / PIPE_VS_PARALLEL;
            println!(
                "- ceiling, {}: its throughput / GNU parallel --pipe: **{}**; by CPU: \
                 {:.1} ms per million lines × {} lines ÷ {j} cores ≥ {} of wall-clock, \
                 where {PIPE_VS_PARALLEL}× parallel needs ≤ {}{}",
                floor.name.trim_start_matches("floor: "),
                ratio(vs),
                median(cpu) * 1e3 / (n as f64 / 1e6),
                count(n),
                crate::report::secs(least),
                crate::report::secs(needed),
                if least > needed || vs < PIPE_VS_PARALLEL {
                    ": no runner can meet the target on this machine"
                } else {
                    ""
                }
            );
        }
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
