//! Results of a run: results.json (every iteration plus summaries), summary.md for people, and
//! SVG plots, all in one directory.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::fio::{FioRun, FioSettings};
use crate::plot::{self, CdfSeries, RatioBar, Stroke};
use crate::recovery::{RecoveryRun, RecoverySettings};
use crate::stats::{self, Spread};
use crate::sysbench::{SysbenchRun, SysbenchSettings};

/// The baseline every ratio is taken against.
pub const BASELINE: &str = "native";

/// One measurement of a case on a backend in one iteration, as named metrics.
pub trait Sample {
    /// What was run (fio job, sysbench workload + threads + working set, data size).
    fn case(&self) -> String;
    fn backend(&self) -> &str;
    /// Named values; the first is the headline metric that ratios to native are taken on.
    fn values(&self) -> NamedValues;
}

pub type NamedValues = Vec<(String, f64)>;

/// Median and range of each metric of one (case, backend) over the iterations.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SummaryRow {
    pub case: String,
    pub backend: String,
    pub iterations: usize,
    pub metrics: Vec<MetricSpread>,
    /// Headline median / native's headline median for the same case.
    pub ratio_to_native: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricSpread {
    pub name: String,
    #[serde(flatten)]
    pub spread: Spread,
}

impl SummaryRow {
    pub fn metric(&self, name: &str) -> Option<Spread> {
        self.metrics.iter().find(|m| m.name == name).map(|m| m.spread)
    }
}

/// Groups runs by (case, backend) and summarizes each group.
pub fn summarize<S: Sample>(runs: &[S]) -> Vec<SummaryRow> {
    // One entry per (case, backend): the named values of each of its iterations.
    let mut groups: Vec<(String, String, Vec<NamedValues>)> = Vec::new();
    for run in runs {
        let (case, backend) = (run.case(), run.backend());
        match groups.iter_mut().find(|(c, b, _)| *c == case && b == backend) {
            Some((_, _, samples)) => samples.push(run.values()),
            None => groups.push((case, backend.to_string(), vec![run.values()])),
        }
    }
    let mut rows: Vec<SummaryRow> = groups
        .into_iter()
        .map(|(case, backend, samples)| {
            let mut names: Vec<&String> = Vec::new();
            for (name, _) in samples.iter().flatten() {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            let metrics = names
                .into_iter()
                .filter_map(|name| {
                    let values = samples
                        .iter()
                        .flatten()
                        .filter(|(n, _)| n == name)
                        .map(|&(_, v)| v);
                    Spread::of(values).map(|spread| MetricSpread {
                        name: name.clone(),
                        spread,
                    })
                })
                .collect();
            SummaryRow {
                case,
                backend,
                iterations: samples.len(),
                metrics,
                ratio_to_native: None,
            }
        })
        .collect();
    // Rows of one case together, cases and backends in the order they first ran.
    let mut cases: Vec<String> = Vec::new();
    for row in &rows {
        if !cases.contains(&row.case) {
            cases.push(row.case.clone());
        }
    }
    rows.sort_by_key(|row| cases.iter().position(|case| *case == row.case));
    let headline = |row: &SummaryRow| row.metrics.first().map(|m| m.spread.median);
    for i in 0..rows.len() {
        let baseline = rows
            .iter()
            .find(|r| r.case == rows[i].case && r.backend == BASELINE)
            .and_then(headline);
        rows[i].ratio_to_native = baseline
            .zip(headline(&rows[i]))
            .and_then(|(base, value)| stats::ratio(value, base));
    }
    rows
}

/// Runs of one suite, its settings, and their summary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SuiteResults<Settings, Run> {
    pub settings: Settings,
    pub runs: Vec<Run>,
    pub summary: Vec<SummaryRow>,
}

impl<Settings, Run: Sample> SuiteResults<Settings, Run> {
    pub fn new(settings: Settings, runs: Vec<Run>) -> Self {
        let summary = summarize(&runs);
        SuiteResults {
            settings,
            runs,
            summary,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendInfo {
    pub name: String,
    pub description: String,
}

/// Where the numbers came from; they only compare within one run on one machine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Environment {
    pub kernel: String,
    pub cpus: usize,
    pub work_dir: String,
    pub work_dir_filesystem: String,
    /// Tool name -> version line.
    pub tools: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub started_at: String,
    pub duration_s: f64,
    pub quick: bool,
    pub iterations: u32,
    pub environment: Environment,
    pub backends: Vec<BackendInfo>,
    pub fio: Option<SuiteResults<FioSettings, FioRun>>,
    pub sysbench: Option<SuiteResults<SysbenchSettings, SysbenchRun>>,
    pub recovery: Option<SuiteResults<RecoverySettings, RecoveryRun>>,
    /// Measured steps that failed (suite, step, error); the run went on without them.
    #[serde(default)]
    pub failed_steps: Vec<String>,
}

/// Writes results.json, summary.md and the plots into `dir`.
pub fn write(results: &Results, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(results)?)?;
    let backend_index = |name: &str| results.backends.iter().position(|b| b.name == name).unwrap_or(0);
    let mut plots = Vec::new();
    if let Some(fio) = &results.fio {
        plots.extend(ratio_plot(
            dir,
            "fio-iops-ratio.svg",
            "fio: IOPS relative to native",
            &fio.summary,
            &backend_index,
        )?);
        for job in &fio.settings.jobs {
            let file = format!("fio-cdf-{job}.svg");
            plot::latency_cdf(
                &dir.join(&file),
                &format!("fio {job}: latency CDF"),
                &cdf_series(&fio.runs, job, &backend_index),
            )
            .with_context(|| format!("plotting {file}"))?;
            plots.push(file);
        }
    }
    if let Some(sysbench) = &results.sysbench {
        let title = "sysbench: transactions/s relative to native";
        plots.extend(ratio_plot(
            dir,
            "sysbench-tps-ratio.svg",
            title,
            &sysbench.summary,
            &backend_index,
        )?);
    }
    std::fs::write(dir.join("summary.md"), render_markdown(results, &plots))?;
    Ok(())
}

/// The bar chart of every non-native row's ratio; `None` when there is nothing to compare.
fn ratio_plot(
    dir: &Path,
    file: &str,
    title: &str,
    summary: &[SummaryRow],
    backend_index: &dyn Fn(&str) -> usize,
) -> Result<Option<String>> {
    let bars: Vec<RatioBar> = summary
        .iter()
        .filter(|row| row.backend != BASELINE)
        .filter_map(|row| {
            let label = format!("{} · {}", row.case, row.backend);
            row.ratio_to_native.map(|ratio| RatioBar {
                label,
                backend_index: backend_index(&row.backend),
                ratio,
            })
        })
        .collect();
    if bars.is_empty() {
        return Ok(None);
    }
    plot::ratio_bars(
        &dir.join(file),
        title,
        "× native (median over iterations; 1.0 = native)",
        &bars,
    )?;
    Ok(Some(file.to_string()))
}

/// One CDF line per backend and operation, pointwise median over iterations.
fn cdf_series(runs: &[FioRun], job: &str, backend_index: &dyn Fn(&str) -> usize) -> Vec<CdfSeries> {
    let mut backends: Vec<&str> = Vec::new();
    for run in runs.iter().filter(|r| r.job == job) {
        if !backends.contains(&run.backend.as_str()) {
            backends.push(&run.backend);
        }
    }
    let mut series = Vec::new();
    for backend in backends {
        let runs: Vec<&FioRun> = runs
            .iter()
            .filter(|r| r.job == job && r.backend == backend)
            .collect();
        let ops = [
            ("read", Stroke::Solid),
            ("write", Stroke::Dashed),
            ("fdatasync", Stroke::Dotted),
        ];
        for (op_index, (op, stroke)) in ops.into_iter().enumerate() {
            let curves: Vec<&[(f64, f64)]> = runs
                .iter()
                .filter_map(|run| run.metrics.ops()[op_index].1.map(|l| l.percentiles_us.as_slice()))
                .collect();
            if !curves.is_empty() {
                series.push(CdfSeries {
                    label: format!("{backend} {op}"),
                    backend_index: backend_index(backend),
                    stroke,
                    points: stats::median_curve(&curves),
                });
            }
        }
    }
    series
}

fn render_markdown(results: &Results, plots: &[String]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Storage benchmark, {}\n", results.started_at);
    if results.quick {
        md.push_str("**Quick mode**: short runs, one iteration, small data. It checks that the harness works; do not judge speed from it.\n\n");
    }
    let _ = writeln!(
        md,
        "{} iteration(s), backends alternated job by job; cells are medians over iterations, ranges are [min–max]. \
         Ratios compare backends measured side by side in this run only: numbers from different runs or machines do not compare.\n",
        results.iterations
    );
    if !results.failed_steps.is_empty() {
        let _ = writeln!(
            md,
            "**{} step(s) failed** and are left out of the medians; their logs are in `raw/`:\n",
            results.failed_steps.len()
        );
        for failed in &results.failed_steps {
            let _ = writeln!(md, "- {}", failed.replace('\n', " "));
        }
        md.push('\n');
    }
    md.push_str("## Setup\n\n| backend | what |\n|---|---|\n");
    for backend in &results.backends {
        let _ = writeln!(md, "| {} | {} |", backend.name, backend.description);
    }
    let env = &results.environment;
    let _ = writeln!(
        md,
        "\nKernel {}, {} CPUs; work directory `{}` on {}. Total time {:.0} s.\n",
        env.kernel, env.cpus, env.work_dir, env.work_dir_filesystem, results.duration_s
    );
    for (tool, version) in &env.tools {
        let _ = writeln!(md, "- {tool}: {version}");
    }
    md.push('\n');
    render_targets(&mut md, results);
    if let Some(fio) = &results.fio {
        let s = &fio.settings;
        let _ = writeln!(
            md,
            "## fio\n\nJob files in `benches/fio/jobs/`; one {} MiB preallocated file per backend, {} s per job after {} s ramp. \
             Latencies are total (submission + completion) per I/O or fdatasync call, in µs. CPU in % of one core; daemon CPU includes the ramp.\n",
            s.file_size_mib, s.runtime_s, s.ramp_s
        );
        md.push_str(&summary_table(&fio.summary, "job"));
    }
    if let Some(sysbench) = &results.sysbench {
        let s = &sysbench.settings;
        let _ = writeln!(
            md,
            "## sysbench (MariaDB)\n\n{} table(s) × {} rows ({:.0} MiB on disk after load), {} s per run. \
             Working set `cached`: buffer pool {} MiB (data fits); `uncached`: buffer pool {} MiB (real page I/O). \
             Latencies in ms; CPU in % of one core.\n\nServer settings, identical on every backend:\n",
            s.tables, s.table_size, s.data_mib, s.runtime_s, s.cached_buffer_pool_mib, s.uncached_buffer_pool_mib
        );
        for setting in &s.server_args {
            let _ = writeln!(md, "- `{setting}`");
        }
        for (backend, aio) in &s.aio_by_backend {
            let _ = writeln!(md, "- asynchronous I/O on {backend}: {aio}");
        }
        let _ = writeln!(
            md,
            "\nsysbench options on every run: `{}`.",
            s.client_args.join(" ")
        );
        md.push('\n');
        md.push_str(&summary_table(&sysbench.summary, "workload"));
    }
    if let Some(recovery) = &results.recovery {
        let s = &recovery.settings;
        let _ = writeln!(
            md,
            "## Recovery to first query\n\nTime from the local disk being wiped to the first successful `{}` (**total s**), \
             then the time of a full scan, `{}`, whose count is checked against the rows loaded. Methods:\n",
            s.first_query, s.full_scan
        );
        for method in &s.methods {
            let _ = writeln!(md, "- `{method}`: {}", describe_recovery_method(method));
        }
        let _ = writeln!(
            md,
            "\n{}. Times in seconds. Server: `{}`.\n",
            if recovery.runs.iter().all(|run| run.page_cache_dropped) {
                "Page cache dropped before each recovery"
            } else {
                "**Page cache not dropped** (needs root), so backups and the pageserver's segments may be read from memory"
            },
            s.server_args.join(" ")
        );
        md.push_str(&summary_table(&recovery.summary, "data"));
    }
    if !plots.is_empty() {
        md.push_str("## Plots\n\n");
        for file in plots {
            let _ = writeln!(md, "![{file}]({file})");
        }
    }
    md
}

fn describe_recovery_method(method: &str) -> &'static str {
    match method {
        crate::recovery::BACKUP => {
            "restore a local `mariadb-backup` copy on the local disk: prepare + copy-back + start (the baseline)"
        }
        crate::recovery::FRESH_NODE => {
            "mariadbd and fuse-ibd SIGKILLed, the node's cache deleted; a fresh fuse-ibd node mounts the timeline on \
             an empty cache (pageserver-lite and walsync on loopback, fuse-ibd's default 1 GiB cache budget) and \
             mariadbd starts with crash recovery (mount s + start to first query s). Pages are fetched on first \
             use, so the full scan pays for the pages the first query did not need (fetched MiB)"
        }
        _ => "unknown method",
    }
}

/// A table of summary rows: the headline metric with its range and ratio, then the other medians.
fn summary_table(rows: &[SummaryRow], case_header: &str) -> String {
    let names = column_names(rows);
    let Some((headline, others)) = names.split_first() else {
        return "No results.\n\n".to_string();
    };
    let mut md = format!("| {case_header} | backend | {headline} [min–max] | × native |");
    for name in others {
        let _ = write!(md, " {name} |");
    }
    md.push_str("\n|---|---|---:|---:|");
    md.push_str(&"---:|".repeat(others.len()));
    md.push('\n');
    for row in rows {
        let head = row.metric(headline).map_or("—".to_string(), |s| {
            format!(
                "{} [{}–{}]",
                format_number(s.median),
                format_number(s.min),
                format_number(s.max)
            )
        });
        let ratio = row.ratio_to_native.map_or("—".to_string(), |r| format!("{r:.2}"));
        let _ = write!(md, "| {} | {} | {head} | {ratio} |", row.case, row.backend);
        for name in others {
            let cell = row
                .metric(name)
                .map_or("—".to_string(), |s| format_number(s.median));
            let _ = write!(md, " {cell} |");
        }
        md.push('\n');
    }
    md.push('\n');
    md
}

/// Every metric name of the rows. A name first seen in a later row goes just before the next
/// name of that row already placed, so related columns (an operation's percentiles) stay
/// together and shared trailing columns (CPU) stay last.
fn column_names(rows: &[SummaryRow]) -> Vec<&str> {
    let mut names: Vec<&str> = Vec::new();
    for row in rows {
        for (i, metric) in row.metrics.iter().enumerate() {
            if names.contains(&metric.name.as_str()) {
                continue;
            }
            let next_placed = row.metrics[i + 1..]
                .iter()
                .find_map(|m| names.iter().position(|&n| n == m.name));
            names.insert(next_placed.unwrap_or(names.len()), &metric.name);
        }
    }
    names
}

/// Three significant digits or so: enough to read a ratio, few enough to scan a column.
pub fn format_number(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 100_000.0 {
        format!("{:.0}k", value / 1000.0)
    } else if magnitude >= 10_000.0 {
        format!("{:.1}k", value / 1000.0)
    } else if magnitude >= 100.0 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// The targets with what this run measured for each; fuse-ibd rows appear once those
/// backends exist. Reported, never asserted.
fn render_targets(md: &mut String, results: &Results) {
    md.push_str("## Targets\n\n| target | backend | measured |\n|---|---|---|\n");
    let mut line = |target: &str, backend: &str, measured: String| {
        let _ = writeln!(md, "| {target} | {backend} | {measured} |");
    };
    let row = |summary: &'_ [SummaryRow], case: &str, backend: &str| -> Option<SummaryRow> {
        summary
            .iter()
            .find(|r| r.case == case && r.backend == backend)
            .cloned()
    };
    let ratio = |r: &SummaryRow| {
        r.ratio_to_native
            .map_or("—".to_string(), |x| format!("{x:.2} × native"))
    };
    let median = |r: &SummaryRow, name: &str| {
        r.metric(name)
            .map_or("—".to_string(), |s| format_number(s.median))
    };
    for backend in results
        .backends
        .iter()
        .map(|b| b.name.as_str())
        .filter(|&b| b != BASELINE)
    {
        if let Some(sysbench) = &results.sysbench {
            for threads in [1, 4] {
                let case = format!("oltp_read_write t{threads} cached");
                if let Some(r) = row(&sysbench.summary, &case, backend) {
                    line(
                        &format!("{case}: fuse-ibd-warm ≥ 0.95 × native TPS (bindfs: 0.93 earlier)"),
                        backend,
                        ratio(&r),
                    );
                }
            }
        }
        if let Some(fio) = &results.fio {
            if let Some(r) = row(&fio.summary, "randread-psync-qd1-j1", backend) {
                let measured = format!(
                    "p50 {} µs, p99 {} µs, {} IOPS ({})",
                    median(&r, "read p50 µs"),
                    median(&r, "read p99 µs"),
                    median(&r, "iops"),
                    ratio(&r)
                );
                line(
                    "randread QD1: warm p50 ≤ 40 µs and IOPS ≥ bindfs; cold p99 ≤ 500 µs",
                    backend,
                    measured,
                );
            }
            if let Some(r) = row(&fio.summary, "commit-fdatasync-j1", backend) {
                let commit_p50 = |r: &SummaryRow| {
                    Some(r.metric("write p50 µs")?.median + r.metric("fdatasync p50 µs")?.median)
                };
                let native = row(&fio.summary, "commit-fdatasync-j1", BASELINE).and_then(|n| commit_p50(&n));
                let measured = match (commit_p50(&r), native) {
                    (Some(p50), Some(base)) => format!(
                        "write+fdatasync p50 {} µs = {:.2} × native",
                        format_number(p50),
                        p50 / base
                    ),
                    _ => "—".to_string(),
                };
                line(
                    "commit-like write+fdatasync: p50 ≤ 1.5 × native",
                    backend,
                    measured,
                );
            }
        }
    }
    if let Some(recovery) = &results.recovery {
        for r in &recovery.summary {
            let measured = format!(
                "{} s (then a full scan: {} s)",
                median(r, "total s"),
                median(r, "full scan s")
            );
            line(&format!("recovery to first query, {}: ≤ 2 s and flat in size (backup restore: 2.9 s at 1.3 GiB earlier)", r.case), &r.backend, measured);
        }
    }
    md.push('\n');
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    struct FakeRun(&'static str, &'static str, f64, f64);

    impl Sample for FakeRun {
        fn case(&self) -> String {
            self.0.to_string()
        }
        fn backend(&self) -> &str {
            self.1
        }
        fn values(&self) -> Vec<(String, f64)> {
            vec![("tps".to_string(), self.2), ("p99 ms".to_string(), self.3)]
        }
    }

    fn runs() -> Vec<FakeRun> {
        vec![
            FakeRun("read", "native", 100.0, 2.0),
            FakeRun("read", "bindfs", 80.0, 3.0),
            FakeRun("read", "native", 120.0, 2.5),
            FakeRun("read", "bindfs", 100.0, 3.5),
            FakeRun("read", "native", 110.0, 2.2),
            FakeRun("read", "bindfs", 90.0, 3.1),
            FakeRun("write", "bindfs", 50.0, 9.0),
        ]
    }

    #[test]
    fn summary_takes_medians_ranges_and_ratios_in_run_order() {
        let rows = summarize(&runs());
        assert_eq!(rows.len(), 3);
        assert_eq!(
            (rows[0].case.as_str(), rows[0].backend.as_str()),
            ("read", "native")
        );
        assert_eq!(rows[0].iterations, 3);
        assert_eq!(
            rows[0].metric("tps"),
            Some(Spread {
                median: 110.0,
                min: 100.0,
                max: 120.0
            })
        );
        assert_eq!(rows[0].ratio_to_native, Some(1.0));
        let bindfs = &rows[1];
        assert_eq!(bindfs.metric("p99 ms").map(|s| s.median), Some(3.1));
        assert!((bindfs.ratio_to_native.unwrap() - 90.0 / 110.0).abs() < 1e-12);
        assert_eq!(rows[2].ratio_to_native, None, "no native run of that case");
    }

    #[test]
    fn summary_table_shows_headline_range_ratio_and_other_medians() {
        let table = summary_table(&summarize(&runs()), "workload");
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "| workload | backend | tps [min–max] | × native | p99 ms |"
        );
        assert_eq!(lines[2], "| read | native | 110 [100–120] | 1.00 | 2.20 |");
        assert_eq!(lines[3], "| read | bindfs | 90.0 [80.0–100] | 0.82 | 3.10 |");
        assert_eq!(lines[4], "| write | bindfs | 50.0 [50.0–50.0] | — | 9.00 |");
    }

    #[test]
    fn columns_that_appear_later_are_placed_before_their_next_neighbour() {
        let row = |names: &[&str]| SummaryRow {
            case: String::new(),
            backend: String::new(),
            iterations: 1,
            metrics: names
                .iter()
                .map(|n| MetricSpread {
                    name: n.to_string(),
                    spread: Spread {
                        median: 1.0,
                        min: 1.0,
                        max: 1.0,
                    },
                })
                .collect(),
            ratio_to_native: None,
        };
        let rows = [
            row(&["iops", "read p50", "cpu"]),
            row(&["iops", "write p50", "cpu", "daemon cpu"]),
        ];
        assert_eq!(
            column_names(&rows),
            ["iops", "read p50", "write p50", "cpu", "daemon cpu"]
        );
    }

    /// A small but complete run: every suite, two backends, two iterations, from real outputs.
    fn sample_results() -> Results {
        let testdata = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
        let read = |name: &str| std::fs::read_to_string(testdata.join(name)).unwrap();
        let mut fio_runs = Vec::new();
        let mut sysbench_runs = Vec::new();
        for iteration in 1..=2 {
            for (backend, slowdown) in [("native", 1.0), ("bindfs", 1.25)] {
                for (job, fixture) in [
                    ("randrw-io_uring-qd16-j4", "fio-randrw-io_uring-qd16-j4.json"),
                    ("commit-fdatasync-j1", "fio-commit-fdatasync-j1.json"),
                ] {
                    let mut metrics = crate::fio::parse_output(&read(fixture)).unwrap();
                    metrics.iops /= slowdown;
                    metrics.backend.daemon_cpu_pct = (backend == "bindfs").then_some(40.0);
                    fio_runs.push(FioRun {
                        job: job.into(),
                        backend: backend.into(),
                        iteration,
                        metrics,
                    });
                }
                let mut metrics =
                    crate::sysbench::parse_output(&read("sysbench-oltp_read_write.txt")).unwrap();
                metrics.tps /= slowdown;
                sysbench_runs.push(SysbenchRun {
                    workload: "oltp_read_write".into(),
                    threads: 1,
                    working_set: crate::sysbench::WorkingSet::Cached,
                    backend: backend.into(),
                    iteration,
                    metrics,
                });
            }
        }
        let fio_settings = FioSettings {
            fio_dir: PathBuf::from("fio"),
            jobs: vec!["randrw-io_uring-qd16-j4".into(), "commit-fdatasync-j1".into()],
            runtime_s: 2,
            ramp_s: 1,
            file_size_mib: 64,
        };
        let sysbench_settings = SysbenchSettings {
            workloads: vec!["oltp_read_write".into()],
            threads: vec![1],
            tables: 1,
            table_size: 20_000,
            runtime_s: 3,
            cached_buffer_pool_mib: 64,
            uncached_buffer_pool_mib: 6,
            data_mib: 9.0,
            server_args: crate::mariadb::server_args(64),
            client_args: vec!["--rand-type=uniform".into()],
            aio_by_backend: vec![("native".into(), "io_uring".into())],
        };
        let recovery_run = RecoveryRun {
            method: "mariadb-backup".into(),
            size_mib: 32,
            iteration: 1,
            data_mib: 165.0,
            prepare_s: Some(0.3),
            copy_back_s: Some(0.1),
            mount_s: None,
            start_to_first_query_s: 0.2,
            total_s: 0.6,
            full_scan_s: 0.4,
            fetched_mib_first_query: None,
            fetched_mib_full_scan: None,
            crash_recovery: false,
            page_cache_dropped: true,
        };
        let recovery_settings = RecoverySettings {
            sizes_mib: vec![32],
            methods: vec!["mariadb-backup".into()],
            buffer_pool_mib: 256,
            first_query: crate::recovery::FIRST_QUERY.into(),
            full_scan: crate::recovery::FULL_SCAN.into(),
            server_args: Vec::new(),
        };
        Results {
            started_at: "2026-11-22 19:00:00 UTC".into(),
            duration_s: 42.0,
            quick: true,
            iterations: 2,
            environment: Environment {
                kernel: "6.18".into(),
                cpus: 2,
                work_dir: "/var/tmp".into(),
                work_dir_filesystem: "ext4".into(),
                tools: BTreeMap::from([("fio".to_string(), "fio-3.33".to_string())]),
            },
            backends: ["native", "bindfs"]
                .map(|name| BackendInfo {
                    name: name.into(),
                    description: format!("{name} setup"),
                })
                .into(),
            fio: Some(SuiteResults::new(fio_settings, fio_runs)),
            sysbench: Some(SuiteResults::new(sysbench_settings, sysbench_runs)),
            recovery: Some(SuiteResults::new(recovery_settings, vec![recovery_run])),
            failed_steps: vec!["fio randread on bindfs (iteration 1/1): fio failed (exit status: 4)".into()],
        }
    }

    #[test]
    fn report_has_json_markdown_and_plots() -> Result<()> {
        let dir = tempfile::tempdir()?;
        write(&sample_results(), dir.path())?;
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("results.json"))?)?;
        assert_eq!(json["fio"]["runs"].as_array().map(Vec::len), Some(8));
        assert_eq!(json["fio"]["summary"][1]["backend"], "bindfs");
        assert!((json["fio"]["summary"][1]["ratio_to_native"].as_f64().unwrap() - 0.8).abs() < 1e-9);
        let md = std::fs::read_to_string(dir.path().join("summary.md"))?;
        for expected in [
            "**Quick mode**",
            "| randrw-io_uring-qd16-j4 | bindfs |",
            "| oltp_read_write t1 cached | bindfs |",
            "`--innodb-flush-neighbors=0`",
            "`--innodb-doublewrite=0`",
            "`--innodb-log-file-buffering=ON`",
            "asynchronous I/O on native: io_uring",
            "sysbench options on every run: `--rand-type=uniform`",
            "| 32 MiB | mariadb-backup |",
            "| recovery to first query, 32 MiB: ≤ 2 s and flat in size (backup restore: 2.9 s at 1.3 GiB earlier) | mariadb-backup | 0.60 s (then a full scan: 0.40 s) |",
            "- `mariadb-backup`: restore a local `mariadb-backup` copy",
            "commit-like write+fdatasync: p50 ≤ 1.5 × native | bindfs | write+fdatasync p50",
            "oltp_read_write t1 cached: fuse-ibd-warm ≥ 0.95 × native TPS (bindfs: 0.93 earlier) | bindfs | 0.80 × native",
            "![fio-iops-ratio.svg](fio-iops-ratio.svg)",
            "**1 step(s) failed** and are left out of the medians",
            "- fio randread on bindfs (iteration 1/1): fio failed (exit status: 4)",
        ] {
            assert!(md.contains(expected), "summary.md lacks {expected:?}:\n{md}");
        }
        for plot in [
            "fio-iops-ratio.svg",
            "fio-cdf-commit-fdatasync-j1.svg",
            "sysbench-tps-ratio.svg",
        ] {
            assert!(
                std::fs::read_to_string(dir.path().join(plot))?.starts_with("<svg"),
                "{plot}"
            );
        }
        Ok(())
    }

    #[test]
    fn numbers_are_short() {
        assert_eq!(format_number(123_456.0), "123k");
        assert_eq!(format_number(12_345.0), "12.3k");
        assert_eq!(format_number(1234.4), "1234");
        assert_eq!(format_number(12.34), "12.3");
        assert_eq!(format_number(0.123), "0.12");
    }
}
