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
//! The sizes can be made smaller for a smoke test with `PSTREAM_BENCH_SHELL_ITEMS`
//! and `PSTREAM_BENCH_SHELL_LINES`.

use crate::cli::{
    expected_doubles, find_coord, gnu_parallel, print_commands, print_peers, run_capture,
    run_digest, run_timed, sh_quote, sorted_lines, version_line, Peer,
};
use crate::report::{count, ratio, Summary};
use crate::{BoxError, Settings};

/// `exec` ÷ GNU parallel, and ÷ `xargs -P`, throughput.
const EXEC_VS_PARALLEL: f64 = 3.0;
const EXEC_VS_XARGS: f64 = 1.5;
/// `pipe` ÷ `parallel --pipe` throughput.
const PIPE_VS_PARALLEL: f64 = 2.0;

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

/// Check every contender's output once (round 0, also a warm-up), then time
/// `s.runs` interleaved rounds.
fn measure(
    s: &Settings,
    peers: &mut [&mut Peer],
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
        for p in peers.iter_mut() {
            if !p.runs() {
                continue;
            }
            match run_timed(&format!("{} > /dev/null", p.script)) {
                Ok(t) => p.times.push(t),
                Err(why) => p.skipped = Some(why),
            }
        }
    }
    Ok(())
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
        format!("{feed}pstream-coord exec -- {what}"),
        format!("{feed}{coord} exec -- {what}"),
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
    print_commands(&[&ps, &par, &xargs]);
    let want: Vec<u8> = if program == "echo" {
        seq_text(items)
    } else {
        Vec::new()
    };
    measure(s, &mut [&mut ps, &mut par, &mut xargs], |name, out| {
        let same = if name.contains("unordered") {
            sorted_lines(out) == sorted_lines(&want)
        } else {
            out == want
        };
        (!same).then(|| format!("{} bytes of output, expected {}", out.len(), want.len()))
    })?;
    print_peers(
        summary,
        (
            &format!("shell-exec-{program}"),
            &format!("a command per item: {what} over {} items", count(items)),
        ),
        "items/s",
        items,
        None,
        &[&ps, &par, &xargs],
        &ps,
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
        format!("{feed}pstream-coord pipe -- awk '{{print $1*2}}'"),
        format!("{feed}{coord} pipe -- awk '{{print $1*2}}'"),
    );
    let mut par = match gnu_parallel() {
        Ok(v) => {
            // parallel runs its command with a shell: the quotes must survive it.
            let cmd = format!(
                "{feed}parallel --will-cite --pipe --keep-order -j{j} \"awk '{{print \\$1*2}}'\""
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
    for _ in 0..s.runs {
        for p in [&mut ps, &mut par, &mut awk] {
            if !p.runs() {
                continue;
            }
            match run_timed(&format!("{} > /dev/null", p.script)) {
                Ok(t) => p.times.push(t),
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
