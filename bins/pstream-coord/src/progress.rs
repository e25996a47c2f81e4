//! What the user sees while a job runs and after: the progress bar (on a terminal),
//! plain progress lines (`--progress` without a terminal), the summary line and the
//! `--stats-json` figures.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use serde_json::json;

/// The figures the main thread publishes for the display.
#[derive(Debug)]
pub struct Counters {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    pub in_flight: AtomicU64,
    pub crashes: AtomicU64,
    /// The number of items, once known (input from a file); `u64::MAX` until then.
    pub total: AtomicU64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            crashes: AtomicU64::new(0),
            total: AtomicU64::new(u64::MAX),
        }
    }
}

impl Counters {
    fn done(&self) -> u64 {
        self.ok.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
    }

    fn message(&self) -> String {
        format!(
            "{} in flight, {} failed, {} crashes",
            self.in_flight.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.crashes.load(Ordering::Relaxed)
        )
    }
}

/// How progress is shown.
#[derive(Debug)]
pub enum Display {
    None,
    Bar { bar: ProgressBar, has_total: bool },
    Plain { last: Instant },
}

/// How often plain progress lines are printed.
const PLAIN_INTERVAL: Duration = Duration::from_secs(2);

impl Display {
    /// `choice`: forced on or off, or `None` for "when stderr is a terminal".
    pub fn new(choice: Option<bool>) -> Display {
        let terminal = std::io::stderr().is_terminal();
        match (choice, terminal) {
            (Some(false), _) | (None, false) => Display::None,
            (_, true) => {
                let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
                bar.set_style(style(false));
                Display::Bar {
                    bar,
                    has_total: false,
                }
            }
            (Some(true), false) => Display::Plain {
                last: Instant::now(),
            },
        }
    }

    /// Redraw from the counters (called by the ticker, about ten times a second).
    pub fn update(&mut self, counters: &Counters, elapsed: Duration) {
        match self {
            Display::None => {}
            Display::Bar { bar, has_total } => {
                let total = counters.total.load(Ordering::Relaxed);
                if total != u64::MAX && !*has_total {
                    bar.set_length(total);
                    bar.set_style(style(true));
                    *has_total = true;
                }
                bar.set_position(counters.done());
                bar.set_message(counters.message());
            }
            Display::Plain { last } => {
                if last.elapsed() >= PLAIN_INTERVAL {
                    *last = Instant::now();
                    let done = counters.done();
                    let total = counters.total.load(Ordering::Relaxed);
                    let of = if total == u64::MAX {
                        String::new()
                    } else {
                        format!(" of {total}")
                    };
                    crate::stdio::say(&format!(
                        "pstream-coord: {done}{of} items done ({}/s), {}",
                        rate(done, elapsed),
                        counters.message()
                    ));
                }
            }
        }
    }

    /// Print a line above the bar.
    pub fn println(&self, line: &str) {
        match self {
            Display::Bar { bar, .. } => bar.suspend(|| crate::stdio::say(line)),
            _ => crate::stdio::say(line),
        }
    }

    /// Remove the bar before the summary.
    pub fn finish(&self) {
        if let Display::Bar { bar, .. } = self {
            bar.finish_and_clear();
        }
    }
}

fn style(with_total: bool) -> ProgressStyle {
    let template = if with_total {
        "{spinner} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} items \
         ({rate}, ETA {eta}) {msg}"
    } else {
        "{spinner} [{elapsed_precise}] {human_pos} items ({rate}) {msg}"
    };
    ProgressStyle::with_template(template)
        .expect("the progress template is valid")
        .with_key(
            "rate",
            |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0}/s", state.per_sec());
            },
        )
}

fn rate(done: u64, elapsed: Duration) -> u64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        (done as f64 / secs) as u64
    } else {
        0
    }
}

/// The figures of a finished (or stopped) job.
#[derive(Debug, Clone)]
pub struct Summary {
    pub ok: u64,
    pub failed: u64,
    pub crashes: u64,
    pub timeouts: u64,
    pub respawns: u64,
    pub retries: u64,
    pub peak_in_flight: u64,
    /// Input lines skipped because an earlier run handled them (--resume).
    pub resumed_from: u64,
    pub elapsed: Duration,
    /// What stopped the job before its input ended, if anything.
    pub stopped_by: Option<String>,
    pub exit_code: u8,
    /// Workers across the network whose connection was lost.
    pub lost: u64,
    /// Per host: this machine's workers under "local", others by IP address.
    pub hosts: std::collections::BTreeMap<String, pstream::HostStats>,
}

impl Summary {
    pub fn line(&self) -> String {
        let mut line = format!(
            "pstream-coord: {} items in {:.2}s ({}/s): {} ok, {} failed; \
             {} crashes, {} timeouts, {} respawns, {} retries",
            self.ok + self.failed,
            self.elapsed.as_secs_f64(),
            rate(self.ok + self.failed, self.elapsed),
            self.ok,
            self.failed,
            self.crashes,
            self.timeouts,
            self.respawns,
            self.retries,
        );
        if self.lost > 0 {
            line.push_str(&format!("; {} workers lost", self.lost));
        }
        if self.hosts.keys().any(|h| h != "local") {
            let hosts: Vec<String> = self
                .hosts
                .iter()
                .map(|(host, h)| {
                    let lost = if h.lost > 0 {
                        format!(", {} lost", h.lost)
                    } else {
                        String::new()
                    };
                    format!("{host} {} items by {} workers{lost}", h.items, h.workers)
                })
                .collect();
            line.push_str(&format!("; hosts: {}", hosts.join(", ")));
        }
        if self.resumed_from > 0 {
            line.push_str(&format!("; resumed after line {}", self.resumed_from));
        }
        if let Some(why) = &self.stopped_by {
            line.push_str(&format!("; stopped early: {why}"));
        }
        line
    }

    pub fn json(&self) -> serde_json::Value {
        json!({
            "items": self.ok + self.failed,
            "items_ok": self.ok,
            "items_failed": self.failed,
            "crashes": self.crashes,
            "timeouts": self.timeouts,
            "respawns": self.respawns,
            "retries": self.retries,
            "peak_in_flight": self.peak_in_flight,
            "resumed_from_line": self.resumed_from,
            "elapsed_seconds": self.elapsed.as_secs_f64(),
            "items_per_second": rate(self.ok + self.failed, self.elapsed),
            "stopped_by": self.stopped_by,
            "exit_code": self.exit_code,
            "lost_workers": self.lost,
            "peak_rss_kib": peak_rss_kib(),
            "hosts": self.hosts.iter().map(|(host, h)| {
                (host.clone(), json!({
                    "workers": h.workers,
                    "items": h.items,
                    "crashes": h.crashes,
                    "lost": h.lost,
                }))
            }).collect::<serde_json::Map<String, serde_json::Value>>(),
        })
    }
}

/// This process's peak resident memory so far (`VmHWM`), in KiB; `None` where
/// /proc does not say.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
