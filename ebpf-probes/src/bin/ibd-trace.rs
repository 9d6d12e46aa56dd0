//! `ibd-trace`: per-operation kernel latency histograms for a FUSE datadir and its mariadbd,
//! printed like bcc's `biolatency` every interval (or as JSON lines with `--json`).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Parser;
use ebpf_probes::{
    slot_range_ns, KernelLatency, LatencySnapshot, OpHistogram, PidSource, ProbeConfig, Source, SourceStatus,
};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// FUSE mount point (the MariaDB datadir) whose requests are measured.
    #[arg(long)]
    mount: PathBuf,
    /// mariadbd pid whose file syscalls and io_uring requests are measured.
    #[arg(long, conflicts_with = "pid_file")]
    pid: Option<u32>,
    /// mariadbd pid file, re-read every interval so a restarted server is followed.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Reporting interval, e.g. `1s`, `500ms`, `2m`.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
    /// Stop after this many intervals (default: run until killed).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// One JSON object per interval instead of text histograms.
    #[arg(long)]
    json: bool,
    /// Sources to attach (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "fuse,syscall,io_uring", value_parser = parse_source)]
    sources: Vec<Source>,
    /// Pin directory name under /sys/fs/bpf/fuse_ibd_v2/ (suffixed with this process's pid).
    #[arg(long, default_value = "ibd-trace")]
    instance: String,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 1s or 500ms"))?;
    let seconds = match unit {
        "ms" => number / 1e3,
        "s" | "" => number,
        "m" => number * 60.0,
        _ => return Err(format!("unknown unit `{unit}` in `{text}` (use ms, s or m)")),
    };
    if seconds <= 0.0 {
        return Err("the interval must be positive".to_owned());
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn parse_source(text: &str) -> Result<Source, String> {
    Source::ALL
        .into_iter()
        .find(|source| source.as_str() == text)
        .ok_or_else(|| format!("unknown source `{text}` (fuse, syscall, io_uring)"))
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let pids = match (args.pid, &args.pid_file) {
        (Some(pid), _) => PidSource::Pid(pid),
        (None, Some(file)) => PidSource::PidFile(file.clone()),
        (None, None) => PidSource::None,
    };
    let mut config = ProbeConfig::new(&args.mount, pids).instance(&args.instance);
    config.sources = args.sources.clone();
    let mut probes = KernelLatency::load(config)
        .with_context(|| format!("loading eBPF probes for {}", args.mount.display()))?;
    for (source, status) in probes.sources() {
        if let SourceStatus::Unavailable(reason) = status {
            eprintln!("warning: {source} latency unavailable: {reason}");
        }
    }
    eprintln!(
        "Tracing {} (maps pinned in {}). Ctrl-C to stop.",
        args.mount.display(),
        probes.pin_dir().display()
    );

    stop_on_signals();
    let mut previous = LatencySnapshot::default();
    let mut interval_number = 0;
    let mut stopped = false;
    while !stopped && args.count.is_none_or(|count| interval_number < count) {
        // On Ctrl-C the partial interval is still reported, like bcc's tools do.
        stopped = !sleep_unless_stopped(args.interval);
        interval_number += 1;
        let traced_pid = probes.follow_pid()?;
        let current = probes.snapshot()?;
        let delta = current.since(&previous);
        previous = current;
        if args.json {
            println!("{}", interval_json(&delta, traced_pid));
        } else {
            print!("{}", interval_text(&delta, traced_pid));
        }
    }
    Ok(())
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_signal: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Ctrl-C and SIGTERM end the loop normally, so the probes are dropped and their pins removed.
fn stop_on_signals() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, request_stop as *const () as libc::sighandler_t) };
    }
}

/// Sleeps for `duration`; false if a stop was requested meanwhile.
fn sleep_unless_stopped(duration: Duration) -> bool {
    const TICK: Duration = Duration::from_millis(50);
    let deadline = Instant::now() + duration;
    while !STOP.load(Ordering::Relaxed) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(TICK));
    }
    false
}

fn format_ns(ns: f64) -> String {
    match ns {
        ns if ns < 1e3 => format!("{ns:.0}ns"),
        ns if ns < 1e6 => format!("{:.1}us", ns / 1e3),
        ns if ns < 1e9 => format!("{:.1}ms", ns / 1e6),
        ns => format!("{:.2}s", ns / 1e9),
    }
}

const BAR_WIDTH: u64 = 40;

fn histogram_text(out: &mut String, histogram: &OpHistogram) {
    let first = histogram.slots.iter().position(|&n| n > 0).unwrap_or(0);
    let last = histogram.slots.iter().rposition(|&n| n > 0).unwrap_or(0);
    let max = histogram.slots.iter().copied().max().unwrap_or(0).max(1);
    let _ = writeln!(out, "{:>26} : {:<8} distribution", "nsecs", "count");
    for slot in first..=last {
        let (lo, hi) = slot_range_ns(slot);
        let n = histogram.slots[slot];
        let bar = "*".repeat((n * BAR_WIDTH / max) as usize);
        let _ = writeln!(out, "{lo:>12} -> {:<11} : {n:<8} |{bar:<40}|", hi - 1);
    }
}

fn interval_text(delta: &LatencySnapshot, traced_pid: Option<u32>) -> String {
    let mut out = String::new();
    let pid = traced_pid.map_or_else(|| "none".to_owned(), |p| p.to_string());
    let _ = writeln!(out, "\n=== {:.3} (mariadbd pid {pid}) ===", unix_time());
    if delta.ops.is_empty() {
        out.push_str("no requests\n");
    }
    for (id, histogram) in &delta.ops {
        let quantile = |q| histogram.quantile_ns(q).map_or_else(|| "-".to_owned(), format_ns);
        let _ = writeln!(
            out,
            "\n{} {}: count {} avg {} p50 ~{} p99 ~{}",
            id.source,
            id.name(),
            histogram.count,
            format_ns(histogram.sum_ns as f64 / histogram.count.max(1) as f64),
            quantile(0.5),
            quantile(0.99),
        );
        histogram_text(&mut out, histogram);
    }
    out
}

fn interval_json(delta: &LatencySnapshot, traced_pid: Option<u32>) -> serde_json::Value {
    let ops: Vec<_> = delta
        .ops
        .iter()
        .map(|(id, h)| {
            let buckets: Vec<_> = (0..h.slots.len())
                .filter(|&slot| h.slots[slot] > 0)
                .map(|slot| {
                    let (lo, hi) = slot_range_ns(slot);
                    json!({"lo_ns": lo, "hi_ns": hi, "count": h.slots[slot]})
                })
                .collect();
            json!({
                "source": id.source,
                "op": id.name(),
                "count": h.count,
                "sum_ns": h.sum_ns,
                "p50_ns": h.quantile_ns(0.5),
                "p99_ns": h.quantile_ns(0.99),
                "buckets": buckets,
            })
        })
        .collect();
    json!({"time": unix_time(), "pid": traced_pid, "ops": ops})
}

fn unix_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("1h").is_err());
        assert!(parse_duration("0s").is_err());
    }
}
