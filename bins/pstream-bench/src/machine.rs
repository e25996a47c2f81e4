//! What the numbers were measured on: cores, CPU model, kernel, date.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::Settings;

/// The CPUs this process may run on.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The CPU model as `/proc/cpuinfo` names it.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, model)| model.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Today's date (UTC) as `YYYY-MM-DD`, without a date library.
pub fn today() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// How many cores' worth of CPU `threads` busy threads really get: the same fixed
/// loop run on one thread, then on `threads` threads at once. A virtual machine
/// whose CPUs share physical cores shows less than `threads` here, and no runtime,
/// rayon included, can scale past it.
pub fn effective_parallelism(threads: usize) -> f64 {
    fn spin() {
        let mut x = 1u64;
        for _ in 0..100_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
    let start = Instant::now();
    spin();
    let one = start.elapsed().as_secs_f64();
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(spin);
        }
    });
    let all = start.elapsed().as_secs_f64();
    threads as f64 * one / all
}

/// The lines at the top of every report.
pub fn print_header(settings: &Settings) {
    println!("# pstream-bench");
    println!();
    println!(
        "- machine: {} cores, {}, Linux {}",
        settings.workers,
        cpu_model(),
        kernel()
    );
    println!(
        "- effective parallelism: {:.2} of {} (the same CPU-bound loop on {} threads at once vs on one)",
        effective_parallelism(settings.workers),
        settings.workers,
        settings.workers
    );
    println!("- date: {}", today());
    println!(
        "- runs per measurement: {} ({} for `double` against the reference pool and over TCP \
         against the Unix socket, whose ratios sit within this machine's round-to-round \
         noise; tables show medians; ratios are medians of per-round ratios){}",
        settings.runs,
        settings.ratio_runs(),
        if settings.quick {
            "; --quick sizes"
        } else {
            ""
        }
    );
    println!(
        "- workers: {} processes for pstream and the reference pool, {} threads for rayon",
        settings.workers, settings.workers
    );
    println!();
}
