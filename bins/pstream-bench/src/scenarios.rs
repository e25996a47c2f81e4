//! The scenarios. Each one prints its table and records its targets in the summary.
//!
//! Contenders of a scenario run in interleaved rounds (one run of each per round),
//! so a ratio is computed within a round, on the same machine state, and the table
//! reports the median over the rounds.

use std::hint::black_box;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pstream::{Executor, ProcessExecutor, ProcessPool, ThreadExecutor};
use pstream_examples::{double, sha256_bytes, slow_double, Blob};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::chart::{Bar, Chart, Plot, Series};
use crate::python::Python;
use crate::reference::{self, RefPool};
use crate::report::{count, median, median_ratio, rate, ratio, secs, timed, Summary, Table};
use crate::{BoxError, Scenario, Settings};

/// Run one scenario.
pub fn run(scenario: Scenario, s: &Settings, summary: &mut Summary) -> Result<(), BoxError> {
    match scenario {
        Scenario::Double => double_scenario(s, summary),
        Scenario::Sha => sha_scenario(s, summary),
        Scenario::Scaling => scaling_scenario(s, summary),
        Scenario::Rss => rss_scenario(s, summary),
        Scenario::Latency => latency_scenario(s, summary),
        Scenario::Fire => fire_scenario(s, summary),
        Scenario::Cli => crate::cli::cli_scenario(s, summary),
        Scenario::Shell => crate::shell::shell_scenario(s, summary),
        Scenario::Executors => executors_scenario(s, summary),
        Scenario::Tcp => crate::tcp::tcp_scenario(s, summary),
    }
}

fn pool(workers: usize) -> Result<ProcessPool, BoxError> {
    Ok(ProcessPool::builder().workers(workers).build()?)
}

fn rayon_pool(threads: usize) -> Result<rayon::ThreadPool, BoxError> {
    Ok(rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?)
}

/// The times of one contender, one per round, or why it did not run.
#[derive(Debug)]
struct Contender {
    name: String,
    times: Vec<f64>,
    skipped: Option<String>,
}

impl Contender {
    fn new(name: impl Into<String>) -> Contender {
        Contender {
            name: name.into(),
            times: Vec::new(),
            skipped: None,
        }
    }

    fn skip(&mut self, why: impl Into<String>) {
        self.skipped = Some(why.into());
    }

    fn runs(&self) -> bool {
        self.skipped.is_none()
    }

    /// Median over rounds of (this contender's time / `base`'s time): how many
    /// times faster `base` is than this one.
    fn slowdown_vs(&self, base: &Contender) -> f64 {
        median_ratio(&self.times, &base.times)
    }
}

/// Print the contenders' medians, with each one's speed relative to `base`, and
/// keep a chart of their throughputs (median, with the range over the rounds) as
/// `<stem>.svg`.
fn print_contenders(
    summary: &mut Summary,
    (stem, title): (&str, &str),
    items: u64,
    contenders: &[&Contender],
    base: &Contender,
) {
    summary.chart(throughput_chart(stem, title, items, contenders));
    let mut table = Table::new(&[
        "contender",
        "median time",
        "items/s",
        &format!("{} ÷ this (throughput)", base.name),
    ]);
    for c in contenders {
        if let Some(why) = &c.skipped {
            table.row(vec![c.name.clone(), "skipped".into(), why.clone()]);
            continue;
        }
        let t = median(&c.times);
        table.row(vec![
            c.name.clone(),
            secs(t),
            rate(items as f64 / t),
            ratio(c.slowdown_vs(base)),
        ]);
    }
    table.print();
}

/// A bar per contender that ran: millions of items per second at the median time,
/// the whisker spanning the slowest and the fastest round.
fn throughput_chart(stem: &str, title: &str, items: u64, contenders: &[&Contender]) -> Chart {
    let per_sec = |t: f64| items as f64 / t / 1e6;
    let bars = contenders
        .iter()
        .filter(|c| c.runs() && !c.times.is_empty())
        .map(|c| {
            let fastest = c.times.iter().copied().fold(f64::INFINITY, f64::min);
            let slowest = c.times.iter().copied().fold(0.0, f64::max);
            Bar {
                name: c.name.replace('`', ""),
                value: per_sec(median(&c.times)),
                range: Some((per_sec(slowest), per_sec(fastest))),
            }
        })
        .collect();
    Chart {
        stem: stem.into(),
        title: title.into(),
        plot: Plot::Bars {
            unit: "million items per second (median; whisker: slowest to fastest round)".into(),
            bars,
        },
    }
}

fn check<T: PartialEq + std::fmt::Debug>(who: &str, got: T, want: T) -> Result<(), BoxError> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{who} computed a wrong result: {got:?}, expected {want:?}").into())
    }
}

// ---------------------------------------------------------------------------------
// 1. double

/// The body of `pstream_examples::double`, for the in-process contenders.
fn local_double(x: i64) -> Result<i64, String> {
    x.checked_mul(2)
        .ok_or_else(|| format!("{x} * 2 overflows a 64-bit integer"))
}

pub(crate) fn pstream_double(pool: &ProcessPool, n: u64) -> Result<i64, BoxError> {
    let mut sum = 0i64;
    for r in pool.map(double, 0..n as i64)? {
        sum = sum.wrapping_add(r?);
    }
    Ok(sum)
}

/// The `__double` child: `double` over `items` with a window of `window` items and
/// batches of at most `max_batch`.
pub fn double_alone(
    items: u64,
    workers: usize,
    window: Option<usize>,
    max_batch: Option<usize>,
) -> Result<(), BoxError> {
    // Workers from this file, not `/proc/self/exe`: under valgrind that is the tool.
    let mut builder = ProcessPool::builder()
        .workers(workers)
        .program(std::env::current_exe()?);
    if let Some(window) = window {
        builder = builder.window(window);
    }
    if let Some(max_batch) = max_batch {
        builder = builder.max_batch(max_batch);
    }
    let pool = builder.build()?;
    let (d, sum) = timed(|| pstream_double(&pool, items));
    check(
        "pstream",
        sum?,
        (items as i128 * (items as i128 - 1)) as i64,
    )?;
    println!("{:.4}", d.as_secs_f64());
    Ok(())
}

/// The `__sha` child: SHA-256 over `items` blobs of 1 KiB. Prints the map's time
/// on stdout; on stderr, where the CPU went per item: the coordinator's process
/// (its consumer thread, which makes and encodes the items, and the engine's
/// threads), the workers (reaped when the pool is dropped), and the same work
/// done by one thread without a pool (making each item and hashing it: what
/// rayon spreads over its threads), each split into user and system time.
pub fn sha_alone(items: u64, workers: usize, window_bytes: Option<u64>) -> Result<(), BoxError> {
    use nix::sys::resource::{getrusage, UsageWho};
    let cpu = |who| -> (f64, f64) {
        getrusage(who).map_or((0.0, 0.0), |u| {
            let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 * 1e-6;
            (secs(u.user_time()), secs(u.system_time()))
        })
    };
    let mut builder = ProcessPool::builder()
        .workers(workers)
        .program(std::env::current_exe()?);
    if let Some(bytes) = window_bytes {
        builder = builder.window_bytes(bytes);
    }
    let pool = builder.build()?;
    let own0 = cpu(UsageWho::RUSAGE_SELF);
    let kids0 = cpu(UsageWho::RUSAGE_CHILDREN);
    let (d, sum) = timed(|| -> Result<u64, BoxError> {
        let mut sum = 0u64;
        for r in pool.map(sha256_bytes, (0..items).map(|i| Blob(blob(i))))? {
            sum ^= fold(r?);
        }
        Ok(sum)
    });
    let own1 = cpu(UsageWho::RUSAGE_SELF);
    drop(pool);
    let kids1 = cpu(UsageWho::RUSAGE_CHILDREN);
    let sum = sum?;
    let t0 = cpu(UsageWho::RUSAGE_THREAD);
    let mut want = 0u64;
    for i in 0..items {
        want ^= fold(sha(&blob(i)));
    }
    let t1 = cpu(UsageWho::RUSAGE_THREAD);
    check("pstream", sum, want)?;
    let per = |a: (f64, f64), b: (f64, f64)| {
        let n = items.max(1) as f64;
        ((b.0 - a.0) * 1e9 / n, (b.1 - a.1) * 1e9 / n)
    };
    let (cu, cs) = per(own0, own1);
    let (wu, ws) = per(kids0, kids1);
    let (su, ss) = per(t0, t1);
    eprintln!(
        "CPU per item (ns, user+sys): coordinator {:.0}+{:.0}, workers {:.0}+{:.0}, \
         all {:.0}; one thread making and hashing each item {:.0}+{:.0}; wall {:.0}",
        cu,
        cs,
        wu,
        ws,
        cu + cs + wu + ws,
        su,
        ss,
        d.as_secs_f64() * 1e9 / items.max(1) as f64
    );
    println!("{:.4}", d.as_secs_f64());
    Ok(())
}

/// The window of the probe that shows what the default window costs.
const WIDE_WINDOW: usize = 4 * pstream::DEFAULT_WINDOW;

fn double_scenario(s: &Settings, summary: &mut Summary) -> Result<(), BoxError> {
    let n: u64 = if s.quick { 1_000_000 } else { 10_000_000 };
    let expected = n * (n - 1);
    println!("## 1. `double` over {} i64", count(n));
    println!();
    let pool = pool(s.workers)?;
    // The same with a four times larger window: shows how much the default window
    // (and the batches in flight it allows) costs.
    let wide_pool = ProcessPool::builder()
        .workers(s.workers)
        .window(WIDE_WINDOW)
        .build()?;
    let threads = rayon_pool(s.workers)?;
    let mut ps = Contender::new("pstream `ProcessPool::map`");
    let mut wide = Contender::new(format!(
        "pstream, window {} (probe)",
        count(WIDE_WINDOW as u64)
    ));
    let mut seq = Contender::new("sequential loop");
    let mut ray = Contender::new(format!("rayon `par_iter`, {} threads", s.workers));
    let mut floor = Contender::new(format!(
        "reference pool (batches of {}, window {})",
        reference::BATCH,
        reference::WINDOW
    ));
    let mut py = Contender::new("Python `Pool.imap(chunksize=1000)`");
    let mut refpool = match RefPool::start(s.workers) {
        Ok(p) => Some(p),
        Err(e) => {
            floor.skip(format!("could not start: {e}"));
            None
        }
    };
    let python = match Python::find() {
        Ok(p) => {
            py.name = format!("{} `Pool.imap(chunksize=1000)`", p.version());
            Some(p)
        }
        Err(why) => {
            py.skip(why);
            None
        }
    };

    let runs = s.ratio_runs();
    for _ in 0..runs {
        let (d, sum) = timed(|| pstream_double(&pool, n));
        check("pstream", sum?, expected as i64)?;
        ps.times.push(d.as_secs_f64());

        let (d, sum) = timed(|| pstream_double(&wide_pool, n));
        check("pstream (wide window)", sum?, expected as i64)?;
        wide.times.push(d.as_secs_f64());

        let (d, sum) = timed(|| {
            let mut sum = 0i64;
            for x in 0..n as i64 {
                sum = sum.wrapping_add(local_double(black_box(x)).expect("no overflow"));
            }
            sum
        });
        check("the sequential loop", sum, expected as i64)?;
        seq.times.push(d.as_secs_f64());

        let (d, sum) = timed(|| {
            threads.install(|| {
                (0..n as i64)
                    .into_par_iter()
                    .map(|x| local_double(black_box(x)).expect("no overflow"))
                    .reduce(|| 0, i64::wrapping_add)
            })
        });
        check("rayon", sum, expected as i64)?;
        ray.times.push(d.as_secs_f64());

        if let Some(refpool) = refpool.as_mut() {
            let (d, sum) = timed(|| refpool.map_double(n));
            check("the reference pool", sum?, expected)?;
            floor.times.push(d.as_secs_f64());
        }

        if let Some(python) = &python {
            let run = python.imap_double(n, s.workers, 1000)?;
            check("Python", run.sum, expected)?;
            py.times.push(run.map);
        }
    }

    print_contenders(
        summary,
        (
            "double",
            &format!("double over {} i64: throughput", count(n)),
        ),
        n,
        &[&ps, &wide, &seq, &ray, &floor, &py],
        &ps,
    );
    let vs_python = py.slowdown_vs(&ps);
    let vs_floor = floor.slowdown_vs(&ps);
    if py.runs() {
        println!("- pstream / Python throughput: **{}**", ratio(vs_python));
    }
    if floor.runs() {
        println!(
            "- pstream / reference floor throughput: **{}** (the median of {runs} rounds' \
             ratios; the contenders take turns in each round)",
            ratio(vs_floor)
        );
    }
    println!();
    summary.add(
        "double: pstream ÷ Python Pool.imap",
        ratio(vs_python),
        "≥ 10×",
        py.runs().then_some(vs_python >= 10.0),
    );
    summary.add(
        "double: pstream ÷ reference floor",
        ratio(vs_floor),
        "≥ 1.25×",
        floor.runs().then_some(vs_floor >= 1.25),
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// 2. SHA-256

pub(crate) const BLOB: usize = 1024;

/// Item `i` of the SHA-256 scenario: 1 KiB, different for every `i`.
pub(crate) fn blob(i: u64) -> Vec<u8> {
    let mut v = vec![(i % 251) as u8; BLOB];
    v[..8].copy_from_slice(&i.to_le_bytes());
    v
}

/// Fold a digest into a checksum that does not depend on the order.
pub(crate) fn fold(digest: [u8; 32]) -> u64 {
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(head)
}

fn sha(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn sha_scenario(s: &Settings, summary: &mut Summary) -> Result<(), BoxError> {
    let n: u64 = if s.quick { 100_000 } else { 1_000_000 };
    println!(
        "## 2. SHA-256 over {} items of 1 KiB (`sha256_bytes` on `Blob`s)",
        count(n)
    );
    println!();
    let pool = pool(s.workers)?;
    let threads = rayon_pool(s.workers)?;
    let mut ps = Contender::new("pstream `ProcessPool::map`");
    let mut seq = Contender::new("sequential loop");
    let mut ray = Contender::new(format!("rayon `par_iter`, {} threads", s.workers));
    let mut expected = None;
    for _ in 0..s.runs {
        let (d, sum) = timed(|| {
            let mut sum = 0u64;
            for i in 0..n {
                sum ^= fold(sha(&blob(i)));
            }
            sum
        });
        let want = *expected.get_or_insert(sum);
        seq.times.push(d.as_secs_f64());

        let (d, sum) = timed(|| -> Result<u64, BoxError> {
            let mut sum = 0u64;
            for r in pool.map(sha256_bytes, (0..n).map(|i| Blob(blob(i))))? {
                sum ^= fold(r?);
            }
            Ok(sum)
        });
        check("pstream", sum?, want)?;
        ps.times.push(d.as_secs_f64());

        let (d, sum) = timed(|| {
            threads.install(|| {
                (0..n)
                    .into_par_iter()
                    .map(|i| fold(sha(&blob(i))))
                    .reduce(|| 0, |a, b| a ^ b)
            })
        });
        check("rayon", sum, want)?;
        ray.times.push(d.as_secs_f64());
    }
    print_contenders(
        summary,
        (
            "sha",
            &format!("SHA-256 over {} items of 1 KiB: throughput", count(n)),
        ),
        n,
        &[&ps, &seq, &ray],
        &ps,
    );
    let vs_rayon = ray.slowdown_vs(&ps);
    println!(
        "- pstream / rayon throughput: **{}** ({} MiB/s hashed by pstream)",
        ratio(vs_rayon),
        ((n as f64 * BLOB as f64) / median(&ps.times) / (1 << 20) as f64).round()
    );
    println!();
    summary.add(
        "SHA-256: pstream ÷ rayon",
        ratio(vs_rayon),
        "≥ 0.8×",
        Some(vs_rayon >= 0.8),
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// 3. slow_double scaling

/// The body of `pstream_examples::slow_double`'s spin: burn CPU for `d`.
fn spin(d: Duration) {
    let start = Instant::now();
    let mut x = 0u64;
    while start.elapsed() < d {
        for _ in 0..64 {
            x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

fn local_slow_double(x: i64) -> Result<i64, String> {
    spin(Duration::from_micros(20));
    local_double(x)
}

fn pstream_slow(pool: &ProcessPool, n: u64) -> Result<i64, BoxError> {
    let mut sum = 0i64;
    for r in pool.map(slow_double, 0..n as i64)? {
        sum = sum.wrapping_add(r?);
    }
    Ok(sum)
}

fn scaling_scenario(s: &Settings, summary: &mut Summary) -> Result<(), BoxError> {
    let n: u64 = if s.quick { 50_000 } else { 200_000 };
    let expected = (n * (n - 1)) as i64;
    println!(
        "## 3. `slow_double` (~20 µs of CPU per item) over {} items: scaling",
        count(n)
    );
    println!();
    let pool = pool(s.workers)?;
    let threads = rayon_pool(s.workers)?;
    let mut ps = Contender::new(format!("pstream, {} workers", s.workers));
    let mut seq = Contender::new("sequential loop");
    let mut ray = Contender::new(format!("rayon, {} threads", s.workers));
    let mut scaling = Vec::new();
    for _ in 0..s.runs {
        let (d, sum) = timed(|| {
            let mut sum = 0i64;
            for x in 0..n as i64 {
                sum = sum.wrapping_add(local_slow_double(black_box(x)).expect("no overflow"));
            }
            sum
        });
        check("the sequential loop", sum, expected)?;
        seq.times.push(d.as_secs_f64());

        let (d, sum) = timed(|| pstream_slow(&pool, n));
        check("pstream", sum?, expected)?;
        ps.times.push(d.as_secs_f64());
        scaling.push(
            seq.times.last().copied().unwrap_or(f64::NAN) / (s.workers as f64 * d.as_secs_f64()),
        );

        let (d, sum) = timed(|| {
            threads.install(|| {
                (0..n as i64)
                    .into_par_iter()
                    .map(|x| local_slow_double(black_box(x)).expect("no overflow"))
                    .reduce(|| 0, i64::wrapping_add)
            })
        });
        check("rayon", sum, expected)?;
        ray.times.push(d.as_secs_f64());
    }
    print_contenders(
        summary,
        (
            "scaling",
            &format!(
                "slow_double (~20 µs per item) over {} items: throughput",
                count(n)
            ),
        ),
        n,
        &[&ps, &seq, &ray],
        &ps,
    );
    let efficiency = median(&scaling);
    let rayon_efficiency = seq.slowdown_vs(&ray) / s.workers as f64;
    println!(
        "- pstream rate / ({} cores × sequential rate): **{}** (rayon: {})",
        s.workers,
        ratio(efficiency),
        ratio(rayon_efficiency)
    );
    println!();
    summary.add(
        "slow_double: pstream ÷ (cores × sequential)",
        ratio(efficiency),
        "≥ 0.92×",
        Some(efficiency >= 0.92),
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// 4. coordinator memory

/// `/proc/self/status`'s `VmHWM` (peak resident set), in KiB.
fn peak_rss_kib() -> Result<u64, BoxError> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .ok_or("no VmHWM in /proc/self/status")?;
    Ok(line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?)
}

/// The `__rss` child: map `double` over `items`, then print
/// `<peak KiB after build> <peak KiB at the end> <seconds of the map>`.
pub fn rss_child(items: u64, workers: usize) -> Result<(), BoxError> {
    let pool = pool(workers)?;
    let after_build = peak_rss_kib()?;
    let (d, sum) = timed(|| pstream_double(&pool, items));
    check(
        "pstream",
        sum?,
        (items as i128 * (items as i128 - 1)) as i64,
    )?;
    println!("{after_build} {} {}", peak_rss_kib()?, d.as_secs_f64());
    Ok(())
}

/// What one `__rss` child measured.
#[derive(Debug, Clone, Copy)]
struct RssRun {
    after_build_kib: f64,
    peak_kib: f64,
    secs: f64,
}

fn rss_run(items: u64, workers: usize) -> Result<RssRun, BoxError> {
    let output = Command::new(std::env::current_exe()?)
        .args(["__rss", &items.to_string(), &workers.to_string()])
        .stdin(Stdio::null())
        .output()?;
    if !output.status.success() {
        return Err(format!(
            "the memory child failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let fields: Vec<f64> = stdout
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    match fields[..] {
        [after_build_kib, peak_kib, secs] => Ok(RssRun {
            after_build_kib,
            peak_kib,
            secs,
        }),
        _ => Err(format!("unexpected output from the memory child: {stdout:?}").into()),
    }
}

fn rss_scenario(s: &Settings, summary: &mut Summary) -> Result<(), BoxError> {
    let sizes: &[u64] = if s.quick {
        &[1_000_000, 10_000_000]
    } else {
        &[1_000_000, 10_000_000, 100_000_000]
    };
    println!(
        "## 4. Coordinator peak RSS (VmHWM) mapping `double`, {} workers",
        s.workers
    );
    println!();
    let mut table = Table::new(&[
        "items",
        "runs",
        "peak RSS after build",
        "peak RSS at the end",
        "map time",
        "items/s",
    ]);
    let mut peaks = Vec::new();
    let mut builds = Vec::new();
    for &n in sizes {
        // One run of the largest size is enough: it takes a while, and varies little.
        let runs = if n >= 100_000_000 { 1 } else { s.runs };
        let mut results = Vec::new();
        for _ in 0..runs {
            results.push(rss_run(n, s.workers)?);
        }
        let build = median(
            &results
                .iter()
                .map(|r| r.after_build_kib)
                .collect::<Vec<_>>(),
        );
        let peak = median(&results.iter().map(|r| r.peak_kib).collect::<Vec<_>>());
        let t = median(&results.iter().map(|r| r.secs).collect::<Vec<_>>());
        peaks.push((n, peak));
        builds.push((n as f64, build / 1024.0));
        table.row(vec![
            count(n),
            runs.to_string(),
            format!("{:.1} MiB", build / 1024.0),
            format!("{:.1} MiB", peak / 1024.0),
            secs(t),
            rate(n as f64 / t),
        ]);
    }
    table.print();
    summary.chart(Chart {
        stem: "rss".into(),
        title: format!("coordinator peak RSS mapping double, {} workers", s.workers),
        plot: Plot::Lines {
            x_desc: "items mapped".into(),
            y_desc: "peak RSS (MiB)".into(),
            series: vec![
                Series {
                    name: "after build".into(),
                    points: builds.clone(),
                },
                Series {
                    name: "at the end of the map".into(),
                    points: peaks
                        .iter()
                        .map(|&(n, kib)| (n as f64, kib / 1024.0))
                        .collect(),
                },
            ],
        },
    });
    let (first_n, first) = peaks[0];
    let (last_n, last) = peaks[peaks.len() - 1];
    let growth = last / first;
    println!(
        "- peak at {} ÷ peak at {}: **{}**",
        count(last_n),
        count(first_n),
        ratio(growth)
    );
    if s.quick {
        println!("- (--quick: the 100,000,000-item run is skipped)");
    }
    println!();
    let mib = last / 1024.0;
    let full = last_n >= 100_000_000;
    summary.add(
        "coordinator peak RSS at 100M items",
        format!("{mib:.1} MiB"),
        "< 16 MiB",
        full.then_some(mib < 16.0),
    );
    summary.add(
        &format!(
            "coordinator peak RSS growth, {} → {}",
            count(first_n),
            count(last_n)
        ),
        ratio(growth),
        "≤ 1.10× (100M vs 1M)",
        full.then_some(growth <= 1.10),
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// 5. latency

fn latency_scenario(s: &Settings, summary: &mut Summary) -> Result<(), BoxError> {
    let samples = s.runs.max(10);
    println!(
        "## 5. Latency ({} samples each; {} workers)",
        samples, s.workers
    );
    println!();
    let mut table = Table::new(&["what", "median", "min", "max"]);
    let mut bars = Vec::new();
    let mut row = |what: String, times: &[f64]| {
        let min = times.iter().copied().fold(f64::INFINITY, f64::min);
        let max = times.iter().copied().fold(0.0, f64::max);
        bars.push(Bar {
            name: what.replace('`', ""),
            value: median(times) * 1e3,
            range: Some((min * 1e3, max * 1e3)),
        });
        table.row(vec![what, secs(median(times)), secs(min), secs(max)]);
        median(times)
    };

    let mut builds = Vec::new();
    for _ in 0..samples {
        let (d, pool) = timed(|| pool(s.workers));
        builds.push(d.as_secs_f64());
        drop(pool?); // the shutdown is not timed
    }
    let build = row(
        "pstream: build a started pool (all workers handshaken)".into(),
        &builds,
    );

    let pool = pool(s.workers)?;
    let mut firsts = Vec::new();
    for _ in 0..samples.max(20) {
        let start = Instant::now();
        let mut results = pool.map(double, 0..1000i64)?;
        let first = results.next();
        firsts.push(start.elapsed().as_secs_f64());
        check("pstream", first.transpose()?, Some(0))?;
        for r in results {
            r?;
        }
    }
    let first = row(
        "pstream: `map` → first result, on a started pool".into(),
        &firsts,
    );
    // A worker SIGKILLed while idle → its replacement has completed the handshake
    // and can take batches (`PoolStats::ready` counts handshakes).
    let mut respawns = Vec::new();
    for k in 0..samples {
        let ready = pool.stats().ready;
        let pids = pool.worker_pids();
        let pid = pids[k % pids.len()];
        let start = Instant::now();
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL)?;
        while pool.stats().ready <= ready {
            if start.elapsed() > Duration::from_secs(10) {
                return Err("a killed worker was not replaced within 10 s".into());
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        respawns.push(start.elapsed().as_secs_f64());
    }
    let respawn = row(
        "pstream: worker SIGKILLed → replacement handshaken".into(),
        &respawns,
    );
    drop(pool);

    let mut ref_builds = Vec::new();
    for _ in 0..samples {
        let (d, pool) = timed(|| RefPool::start(s.workers));
        ref_builds.push(d.as_secs_f64());
        drop(pool?);
    }
    row(
        "reference pool: start (all workers connected)".into(),
        &ref_builds,
    );

    match Python::find() {
        Ok(python) => {
            let mut starts = Vec::new();
            for _ in 0..s.runs {
                starts.push(python.imap_double(1000, s.workers, 1000)?.start);
            }
            row(
                format!(
                    "{}: `Pool({})` until every worker has answered",
                    python.version(),
                    s.workers
                ),
                &starts,
            );
        }
        Err(why) => println!("- Python skipped: {why}"),
    }
    table.print();
    summary.chart(Chart {
        stem: "latency".into(),
        title: format!("latency, {} workers", s.workers),
        plot: Plot::Bars {
            unit: "milliseconds (median; whisker: min to max)".into(),
            bars,
        },
    });
    summary.add(
        "worker death → replacement serving",
        secs(respawn),
        "< 100 ms (ours)",
        Some(respawn < 0.100),
    );
    summary.add(
        "pool start (2 workers, handshaken)",
        secs(build),
        "< 20 ms",
        Some(build < 0.020),
    );
    summary.add(
        "map → first result",
        secs(first),
        "< 5 ms",
        Some(first < 0.005),
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// 6. under fire

/// What one `slow_double` job saw.
#[derive(Debug, Default)]
struct FireRun {
    secs: f64,
    kills: u64,
    crashes: u64,
    respawns: u64,
    retries: u64,
    failed: u64,
}

/// Map `slow_double` over `0..n`, SIGKILLing a worker every `every` if given.
fn fire_run(pool: &ProcessPool, n: u64, every: Option<Duration>) -> Result<FireRun, BoxError> {
    let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
    std::thread::scope(|scope| {
        let killer = scope.spawn(move || {
            let mut kills = 0u64;
            let Some(every) = every else {
                return kills;
            };
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                let pids = pool.worker_pids();
                if pids.is_empty() {
                    continue;
                }
                let pid = pids[kills as usize % pids.len()];
                if kill(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok() {
                    kills += 1;
                }
            }
            kills
        });
        let start = Instant::now();
        let job = (|| -> Result<FireRun, BoxError> {
            let mut results = pool.map(slow_double, 0..n as i64)?;
            let mut run = FireRun::default();
            for (i, r) in results.by_ref().enumerate() {
                match r {
                    Ok(v) => check("pstream", v, 2 * i as i64)?,
                    Err(_) => run.failed += 1,
                }
            }
            if let Some(e) = results.pool_error() {
                return Err(format!("the job ended with a pool error: {e}").into());
            }
            let stats = results.stats();
            run.crashes = stats.crashes;
            run.respawns = stats.respawns;
            run.retries = stats.retries;
            Ok(run)
        })();
        let secs = start.elapsed().as_secs_f64();
        drop(stop);
        let kills = killer.join().expect("the killer thread does not panic");
        let mut run = job?;
        run.secs = secs;
        run.kills = kills;
        Ok(run)
    })
}

fn fire_scenario(s: &Settings, summary: &mut Summary) -> Result<(), BoxError> {
    let n: u64 = if s.quick { 200_000 } else { 500_000 };
    println!(
        "## 6. Under fire: `slow_double` over {} items, {} workers, one SIGKILLed every second",
        count(n),
        s.workers
    );
    println!();
    let pool = pool(s.workers)?;
    let mut calm = Vec::new();
    let mut fire = Vec::new();
    for _ in 0..s.runs {
        calm.push(fire_run(&pool, n, None)?);
        fire.push(fire_run(&pool, n, Some(Duration::from_secs(1)))?);
    }
    let ratios: Vec<f64> = calm
        .iter()
        .zip(&fire)
        .map(|(c, f)| c.secs / f.secs)
        .collect();
    let mut table = Table::new(&[
        "run",
        "median time",
        "items/s",
        "kills sent",
        "crashes (job stats)",
        "respawns",
        "retried batches",
        "failed items",
    ]);
    for (name, runs) in [("no kills", &calm), ("one kill per second", &fire)] {
        let med = |f: fn(&FireRun) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
        let t = med(|r| r.secs);
        table.row(vec![
            name.into(),
            secs(t),
            rate(n as f64 / t),
            format!("{}", med(|r| r.kills as f64)),
            format!("{}", med(|r| r.crashes as f64)),
            format!("{}", med(|r| r.respawns as f64)),
            format!("{}", med(|r| r.retries as f64)),
            format!("{}", med(|r| r.failed as f64)),
        ]);
    }
    table.print();
    summary.chart(Chart {
        stem: "fire".into(),
        title: format!(
            "slow_double over {} items, {} workers, calm and under fire",
            count(n),
            s.workers
        ),
        plot: Plot::Bars {
            unit: "thousand items per second (median; whisker: slowest to fastest run)".into(),
            bars: [("no kills", &calm), ("one SIGKILL per second", &fire)]
                .into_iter()
                .map(|(name, runs)| {
                    let rates: Vec<f64> = runs.iter().map(|r| n as f64 / r.secs / 1e3).collect();
                    Bar {
                        name: name.into(),
                        value: median(&rates),
                        range: Some((
                            rates.iter().copied().fold(f64::INFINITY, f64::min),
                            rates.iter().copied().fold(0.0, f64::max),
                        )),
                    }
                })
                .collect(),
        },
    });
    let r = median(&ratios);
    println!(
        "- throughput under fire / calm throughput: **{}** (crashes per run: {:?}; failed items per run: {:?})",
        ratio(r),
        fire.iter().map(|f| f.crashes).collect::<Vec<_>>(),
        fire.iter().map(|f| f.failed).collect::<Vec<_>>()
    );
    println!();
    summary.add(
        "under fire: throughput ÷ calm throughput",
        ratio(r),
        "≥ 0.8×",
        Some(r >= 0.8),
    );
    Ok(())
}

// 7. The command line: in `cli.rs`.

// ---------------------------------------------------------------------------------
// 8. The Executor API

/// `ThreadExecutor` and `ProcessExecutor` with their default `max_memory_items`, and
/// one worker per core, next to what a Rust user would write instead: rayon's
/// `par_bridge` (the rayon way to parallelise an iterator that is not a collection)
/// and a sequential loop. Every contender reads the input as an iterator.
fn executors_scenario(s: &Settings, summary: &mut Summary) -> Result<(), BoxError> {
    let threads_ex = ThreadExecutor::builder().max_workers(s.workers).build();
    let processes_ex = ProcessExecutor::builder().max_workers(s.workers).build()?;
    let threads = rayon_pool(s.workers)?;
    println!("## 8. The `Executor` API: threads and processes behind one trait");
    println!();
    println!(
        "`max_memory_items` at the defaults ({} for threads, {} for processes), {} workers.",
        count(ThreadExecutor::DEFAULT_MAX_MEMORY_ITEMS as u64),
        count(ProcessExecutor::DEFAULT_MAX_MEMORY_ITEMS as u64),
        s.workers
    );
    println!();

    // `double`: per-item overhead, nothing else.
    let n: u64 = if s.quick { 1_000_000 } else { 5_000_000 };
    let expected = (n * (n - 1)) as i64;
    println!("### `double` over {} i64", count(n));
    println!();
    let mut th = Contender::new("`ThreadExecutor::execute`");
    let mut pr = Contender::new("`ProcessExecutor::execute`");
    let mut br = Contender::new(format!("rayon `par_bridge`, {} threads", s.workers));
    let mut seq = Contender::new("sequential loop");
    for _ in 0..s.runs {
        let (d, sum) = timed(|| execute_double(&threads_ex, n));
        check("ThreadExecutor", sum?, expected)?;
        th.times.push(d.as_secs_f64());

        let (d, sum) = timed(|| execute_double(&processes_ex, n));
        check("ProcessExecutor", sum?, expected)?;
        pr.times.push(d.as_secs_f64());

        let (d, sum) = timed(|| {
            threads.install(|| {
                (0..n as i64)
                    .par_bridge()
                    .map(|x| local_double(black_box(x)).expect("no overflow"))
                    .reduce(|| 0, i64::wrapping_add)
            })
        });
        check("rayon par_bridge", sum, expected)?;
        br.times.push(d.as_secs_f64());

        let (d, sum) = timed(|| {
            let mut sum = 0i64;
            for x in 0..n as i64 {
                sum = sum.wrapping_add(local_double(black_box(x)).expect("no overflow"));
            }
            sum
        });
        check("the sequential loop", sum, expected)?;
        seq.times.push(d.as_secs_f64());
    }
    print_contenders(
        summary,
        (
            "executors-double",
            &format!("Executor API, double over {} i64: throughput", count(n)),
        ),
        n,
        &[&th, &pr, &br, &seq],
        &th,
    );
    println!(
        "- throughput ÷ rayon `par_bridge`: ThreadExecutor **{}**, ProcessExecutor **{}**",
        ratio(br.slowdown_vs(&th)),
        ratio(br.slowdown_vs(&pr))
    );
    println!();

    // SHA-256 of 1 KiB items: work per item, and bytes to carry.
    let n: u64 = if s.quick { 100_000 } else { 500_000 };
    println!("### SHA-256 over {} items of 1 KiB", count(n));
    println!();
    let mut th = Contender::new("`ThreadExecutor::execute`");
    let mut pr = Contender::new("`ProcessExecutor::execute`");
    let mut br = Contender::new(format!("rayon `par_bridge`, {} threads", s.workers));
    let mut seq = Contender::new("sequential loop");
    let mut expected = None;
    for _ in 0..s.runs {
        let (d, sum) = timed(|| {
            let mut sum = 0u64;
            for i in 0..n {
                sum ^= fold(sha(&blob(i)));
            }
            sum
        });
        let want = *expected.get_or_insert(sum);
        seq.times.push(d.as_secs_f64());

        let (d, sum) = timed(|| execute_sha(&threads_ex, n));
        check("ThreadExecutor", sum?, want)?;
        th.times.push(d.as_secs_f64());

        let (d, sum) = timed(|| execute_sha(&processes_ex, n));
        check("ProcessExecutor", sum?, want)?;
        pr.times.push(d.as_secs_f64());

        let (d, sum) = timed(|| {
            threads.install(|| {
                (0..n)
                    .par_bridge()
                    .map(|i| fold(sha(&blob(i))))
                    .reduce(|| 0, |a, b| a ^ b)
            })
        });
        check("rayon par_bridge", sum, want)?;
        br.times.push(d.as_secs_f64());
    }
    print_contenders(
        summary,
        (
            "executors-sha",
            &format!(
                "Executor API, SHA-256 over {} items of 1 KiB: throughput",
                count(n)
            ),
        ),
        n,
        &[&th, &pr, &br, &seq],
        &th,
    );
    println!(
        "- throughput ÷ rayon `par_bridge`: ThreadExecutor **{}**, ProcessExecutor **{}**",
        ratio(br.slowdown_vs(&th)),
        ratio(br.slowdown_vs(&pr))
    );
    println!();
    Ok(())
}

/// The same call for both executors: the point of the trait.
fn execute_double<E: Executor<i64, pstream::Function<i64, i64>>>(
    ex: &E,
    n: u64,
) -> Result<i64, BoxError> {
    let mut sum = 0i64;
    for r in ex.execute(double, 0..n as i64) {
        sum = sum.wrapping_add(r?);
    }
    Ok(sum)
}

fn execute_sha<E: Executor<Blob, pstream::Function<Blob, [u8; 32]>>>(
    ex: &E,
    n: u64,
) -> Result<u64, BoxError> {
    let mut sum = 0u64;
    for r in ex.execute(sha256_bytes, (0..n).map(|i| Blob(blob(i)))) {
        sum ^= fold(r?);
    }
    Ok(sum)
}
