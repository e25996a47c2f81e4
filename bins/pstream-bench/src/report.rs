//! Medians, number formatting, markdown tables and the summary against targets.

use std::time::{Duration, Instant};

/// Run `f` and time it.
pub fn timed<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let start = Instant::now();
    let value = f();
    (start.elapsed(), value)
}

/// Median over rounds of `times[i] / base[i]`: how many times faster the base
/// contender was, measured round by round.
pub fn median_ratio(times: &[f64], base: &[f64]) -> f64 {
    let ratios: Vec<f64> = times.iter().zip(base).map(|(t, b)| t / b).collect();
    median(&ratios)
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

/// Seconds, in the unit that reads best.
pub fn secs(s: f64) -> String {
    if !s.is_finite() {
        "–".into()
    } else if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.0} µs", s * 1e6)
    }
}

/// Items per second.
pub fn rate(items_per_sec: f64) -> String {
    if !items_per_sec.is_finite() {
        "–".into()
    } else if items_per_sec >= 1e6 {
        format!("{:.2} M/s", items_per_sec / 1e6)
    } else if items_per_sec >= 1e3 {
        format!("{:.1} k/s", items_per_sec / 1e3)
    } else {
        format!("{items_per_sec:.0} /s")
    }
}

/// A count with thousands separators.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A ratio, as `1.23×`.
pub fn ratio(r: f64) -> String {
    if r.is_finite() {
        format!("{r:.2}×")
    } else {
        "–".into()
    }
}

/// A markdown table, printed at once.
#[derive(Debug)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these columns; the first is left-aligned, the others right.
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Add a row (missing cells are left empty).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Print the table and a blank line.
    pub fn print(&self) {
        println!("| {} |", self.headers.join(" | "));
        let aligns: Vec<&str> = (0..self.headers.len())
            .map(|i| if i == 0 { "---" } else { "---:" })
            .collect();
        println!("|{}|", aligns.join("|"));
        for row in &self.rows {
            let mut cells = row.clone();
            cells.resize(self.headers.len(), String::new());
            println!("| {} |", cells.join(" | "));
        }
        println!();
    }
}

/// One line of the summary: a target, what was measured, and whether it is met.
#[derive(Debug)]
struct Target {
    what: String,
    measured: String,
    goal: String,
    met: Option<bool>,
}

/// The targets checked along the way, printed at the end.
#[derive(Debug, Default)]
pub struct Summary {
    targets: Vec<Target>,
    charts: Vec<crate::chart::Chart>,
}

impl Summary {
    /// Record a target; `met` is `None` when it could not be measured.
    pub fn add(&mut self, what: &str, measured: String, goal: &str, met: Option<bool>) {
        self.targets.push(Target {
            what: what.into(),
            measured,
            goal: goal.into(),
            met,
        });
    }

    /// Keep a chart of a scenario's figures, to be written when the scenario ends.
    pub fn chart(&mut self, chart: crate::chart::Chart) {
        self.charts.push(chart);
    }

    /// The charts kept since the last call.
    pub fn take_charts(&mut self) -> Vec<crate::chart::Chart> {
        std::mem::take(&mut self.charts)
    }

    /// Print the summary table.
    pub fn print(&self) {
        if self.targets.is_empty() {
            return;
        }
        println!("## Summary against the targets");
        println!();
        let mut table = Table::new(&["target", "measured", "goal", "met"]);
        for t in &self.targets {
            let met = match t.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "not measured",
            };
            table.row(vec![
                t.what.clone(),
                t.measured.clone(),
                t.goal.clone(),
                met.into(),
            ]);
        }
        table.print();
    }
}
