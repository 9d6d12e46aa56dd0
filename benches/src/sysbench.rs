//! The sysbench suite: MariaDB with its datadir on each backend, OLTP workloads at several
//! thread counts, with a buffer pool that holds the data (`cached`) and one that does not
//! (`uncached`, so pages really move through the backend).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::backend::{BackendCost, PreparedBackend};
use crate::mariadb::{self, Server};
use crate::process::{self, CpuMeter};
use crate::progress::Progress;
use crate::report::Sample;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SysbenchSettings {
    pub workloads: Vec<String>,
    pub threads: Vec<u32>,
    pub tables: u32,
    pub table_size: u64,
    pub runtime_s: u32,
    pub cached_buffer_pool_mib: u64,
    pub uncached_buffer_pool_mib: u64,
    /// Filled in by the run: size of the loaded tables on the native backend.
    pub data_mib: f64,
    /// Filled in by the run: settings common to every server (buffer pool size aside).
    pub server_args: Vec<String>,
    /// Filled in by the run: options given to every sysbench run.
    pub client_args: Vec<String>,
    /// Filled in by the run: (backend, io_uring or libaio) as reported by InnoDB.
    pub aio_by_backend: Vec<(String, String)>,
}

/// Uniform access: sysbench's default ("special") keeps the hot rows in a small set that any
/// buffer pool holds, which would defeat the `uncached` working set.
const SYSBENCH_COMMON_ARGS: &[&str] = &[
    "--db-driver=mysql",
    "--mysql-user=root",
    "--mysql-db=sbtest",
    "--rand-type=uniform",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkingSet {
    Cached,
    Uncached,
}

impl WorkingSet {
    fn name(self) -> &'static str {
        match self {
            WorkingSet::Cached => "cached",
            WorkingSet::Uncached => "uncached",
        }
    }

    fn buffer_pool_mib(self, settings: &SysbenchSettings) -> u64 {
        match self {
            WorkingSet::Cached => settings.cached_buffer_pool_mib,
            WorkingSet::Uncached => settings.uncached_buffer_pool_mib,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SysbenchRun {
    pub workload: String,
    pub threads: u32,
    pub working_set: WorkingSet,
    pub backend: String,
    pub iteration: u32,
    pub metrics: SysbenchMetrics,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SysbenchMetrics {
    pub tps: f64,
    pub qps: f64,
    pub latency_avg_ms: f64,
    pub latency_p99_ms: f64,
    /// Deadlocks and the like that sysbench retried, per second.
    pub ignored_errors_per_s: f64,
    pub mariadbd_cpu_pct: f64,
    /// The backend's daemon and services during the run.
    #[serde(flatten)]
    pub backend: BackendCost,
}

impl Sample for SysbenchRun {
    fn case(&self) -> String {
        format!("{} t{} {}", self.workload, self.threads, self.working_set.name())
    }

    fn backend(&self) -> &str {
        &self.backend
    }

    fn values(&self) -> Vec<(String, f64)> {
        let m = &self.metrics;
        let mut values = vec![
            ("tps".to_string(), m.tps),
            ("qps".to_string(), m.qps),
            ("avg ms".to_string(), m.latency_avg_ms),
            ("p99 ms".to_string(), m.latency_p99_ms),
            ("errors/s".to_string(), m.ignored_errors_per_s),
            ("mariadbd CPU %".to_string(), m.mariadbd_cpu_pct),
        ];
        values.extend(m.backend.values());
        values
    }
}

/// Loads the same tables on every backend that runs MariaDB, then for each working set starts
/// the servers with that buffer pool and runs every workload, alternating backends run by run.
/// A cold backend instead gets a fresh node and a newly started server before every run, and
/// no prewarm: each run starts with an empty local cache and an empty buffer pool.
pub fn run_suite(
    settings: &mut SysbenchSettings,
    backends: &mut [PreparedBackend],
    iterations: u32,
    run_root: &Path,
    raw_dir: &Path,
    failed_steps: &mut Vec<String>,
) -> Result<Vec<SysbenchRun>> {
    std::fs::create_dir_all(raw_dir)?;
    for backend in backends.iter().filter(|b| !b.runs_mariadb) {
        eprintln!(
            "sysbench: skipping {}: it serves fio's flat file only, MariaDB does not run on it",
            backend.name
        );
    }
    let mut backends: Vec<&mut PreparedBackend> = backends.iter_mut().filter(|b| b.runs_mariadb).collect();
    // Socket, error log and tmpdir beside the backend, not on it.
    let run_dirs: Vec<PathBuf> = backends
        .iter()
        .map(|backend| run_root.join(format!("mariadb-{}", backend.name)))
        .collect();
    let working_sets = [WorkingSet::Cached, WorkingSet::Uncached];
    let per_working_set = settings.workloads.len() * settings.threads.len() * backends.len();
    let mut progress = Progress::new(
        "sysbench",
        working_sets.len() * iterations as usize * per_working_set,
    );
    settings.server_args = mariadb::FAIRNESS_ARGS.iter().map(|s| s.to_string()).collect();
    settings.client_args = SYSBENCH_COMMON_ARGS.iter().map(|s| s.to_string()).collect();
    settings.aio_by_backend.clear();
    for (backend, run_dir) in backends.iter().zip(&run_dirs) {
        progress.note(&format!(
            "loading {} × {} rows on {}",
            settings.tables, settings.table_size, backend.name
        ));
        let server = load_tables(settings, backend, run_dir, raw_dir)?;
        settings
            .aio_by_backend
            .push((backend.name.to_string(), server.async_io()));
        server.stop()?;
        if backend.name == crate::report::BASELINE {
            settings.data_mib =
                mariadb::directory_size(&backend.dir.join("sbtest"))? as f64 / (1024.0 * 1024.0);
        }
    }
    let mut runs = Vec::new();
    for working_set in working_sets {
        let args = mariadb::server_args(working_set.buffer_pool_mib(settings));
        // Cold backends start theirs before each run.
        let mut servers = backends
            .iter()
            .zip(&run_dirs)
            .map(|(backend, run_dir)| {
                (!backend.is_cold())
                    .then(|| Server::start(&backend.dir, run_dir, &args))
                    .transpose()
            })
            .collect::<Result<Vec<Option<Server>>>>()?;
        if working_set == WorkingSet::Cached {
            for (backend, server) in backends.iter().zip(&servers) {
                let Some(server) = server else { continue };
                progress.note(&format!("prewarming the buffer pool on {}", backend.name));
                let log = raw_dir.join(format!("prewarm-{}.log", backend.name));
                run_sysbench(settings, server, "oltp_read_only", "prewarm", &[], &log)?;
            }
        }
        for iteration in 1..=iterations {
            for workload in &settings.workloads {
                for &threads in &settings.threads {
                    for ((backend, run_dir), server) in
                        backends.iter_mut().zip(&run_dirs).zip(servers.iter_mut())
                    {
                        process::check_interrupted()?;
                        let case = format!(
                            "{workload}-t{threads}-{}-{}-{iteration}",
                            working_set.name(),
                            backend.name
                        );
                        if backend.is_cold() {
                            // Outside the measured time: stop the server, mount a fresh node,
                            // start the server on it (a clean shutdown leaves no redo to replay).
                            if let Some(server) = server.take() {
                                server.stop()?;
                            }
                            backend.fresh_node()?;
                            *server =
                                Some(Server::start(&backend.dir, run_dir, &args).with_context(|| {
                                    format!("starting MariaDB on a fresh node for {case}")
                                })?);
                        }
                        let server = server.as_ref().context("no server")?;
                        let log = raw_dir.join(format!("sysbench-{case}.log"));
                        let metrics = match measure(settings, server, backend, workload, threads, &log) {
                            Ok(metrics) => metrics,
                            Err(error) => {
                                progress.step_failed(&case, &error, failed_steps)?;
                                continue;
                            }
                        };
                        let run = SysbenchRun {
                            workload: workload.clone(),
                            threads,
                            working_set,
                            backend: backend.name.to_string(),
                            iteration,
                            metrics,
                        };
                        progress.step_done(
                            &format!(
                                "{} on {} (iteration {iteration}/{iterations})",
                                run.case(),
                                backend.name
                            ),
                            &format!(
                                "{:.1} TPS, p99 {:.2} ms{}",
                                run.metrics.tps,
                                run.metrics.latency_p99_ms,
                                run.metrics.backend.describe()
                            ),
                        );
                        runs.push(run);
                    }
                }
            }
        }
        for server in servers.into_iter().flatten() {
            server.stop()?;
        }
    }
    Ok(runs)
}

/// Creates the datadir and the sbtest tables; returns the running server.
fn load_tables(
    settings: &SysbenchSettings,
    backend: &PreparedBackend,
    run_dir: &Path,
    raw_dir: &Path,
) -> Result<Server> {
    let name = backend.name;
    mariadb::install(
        &backend.dir,
        run_dir,
        &raw_dir.join(format!("install-db-{name}.log")),
    )?;
    let args = mariadb::server_args(settings.cached_buffer_pool_mib);
    let server = Server::start(&backend.dir, run_dir, &args)?;
    server.query("CREATE DATABASE sbtest")?;
    let log = raw_dir.join(format!("prepare-{name}.log"));
    run_sysbench(settings, &server, "oltp_read_write", "prepare", &[], &log)?;
    Ok(server)
}

fn measure(
    settings: &SysbenchSettings,
    server: &Server,
    backend: &PreparedBackend,
    workload: &str,
    threads: u32,
    log: &Path,
) -> Result<SysbenchMetrics> {
    let args = [
        format!("--threads={threads}"),
        format!("--time={}", settings.runtime_s),
        "--percentile=99".to_string(),
    ];
    backend.settle()?;
    let server_cpu = CpuMeter::start(server.pid())?;
    let cost = backend.cost_meter()?;
    run_sysbench(settings, server, workload, "run", &args, log)?;
    let mut metrics = parse_output(&std::fs::read_to_string(log)?)?;
    metrics.mariadbd_cpu_pct = server_cpu.percent_of_one_core()?;
    metrics.backend = cost.finish()?;
    Ok(metrics)
}

fn run_sysbench(
    settings: &SysbenchSettings,
    server: &Server,
    workload: &str,
    command: &str,
    args: &[String],
    log: &Path,
) -> Result<()> {
    let mut sysbench = Command::new("sysbench");
    sysbench.arg(workload).args(SYSBENCH_COMMON_ARGS).args(args);
    sysbench.arg(format!("--mysql-socket={}", server.socket().display()));
    sysbench
        .arg(format!("--tables={}", settings.tables))
        .arg(format!("--table-size={}", settings.table_size));
    sysbench.arg(command);
    let timeout = Duration::from_secs(u64::from(settings.runtime_s) + 3600);
    process::run_logged(
        &mut sysbench,
        &format!("sysbench {workload} {command}"),
        log,
        timeout,
    )
}

/// Reads the text report of `sysbench ... --percentile=99 run` (sysbench 1.0 has no JSON).
/// CPU figures are not in it and are left at zero.
pub fn parse_output(text: &str) -> Result<SysbenchMetrics> {
    // "transactions:  286    (95.18 per sec.)" -> 95.18
    let per_second = |label: &str| -> Result<f64> {
        let line = find_line(text, label)?;
        let inner = line
            .split_once('(')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        inner
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no rate in {line:?}"))
    };
    // "avg:    10.48" -> 10.48
    let value = |label: &str| -> Result<f64> {
        let line = find_line(text, label)?;
        let rest = &line[line.find(label).unwrap_or(0) + label.len()..];
        rest.trim()
            .parse()
            .with_context(|| format!("no number in {line:?}"))
    };
    Ok(SysbenchMetrics {
        tps: per_second("transactions:")?,
        qps: per_second("queries:")?,
        latency_avg_ms: value("avg:")?,
        latency_p99_ms: value("99th percentile:")?,
        ignored_errors_per_s: per_second("ignored errors:")?,
        mariadbd_cpu_pct: 0.0,
        backend: BackendCost::default(),
    })
}

fn find_line<'a>(text: &'a str, label: &str) -> Result<&'a str> {
    match text.lines().map(str::trim).find(|line| line.starts_with(label)) {
        Some(line) => Ok(line),
        None => bail!("sysbench output has no {label:?} line"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/sysbench-oltp_read_write.txt");
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn parses_rates_and_latencies() -> Result<()> {
        let metrics = parse_output(&fixture())?;
        assert_eq!(metrics.tps, 95.18);
        assert_eq!(metrics.qps, 1903.69);
        assert_eq!(metrics.latency_avg_ms, 10.48);
        assert_eq!(metrics.latency_p99_ms, 73.13);
        assert_eq!(metrics.ignored_errors_per_s, 0.0);
        Ok(())
    }

    #[test]
    fn reports_which_line_is_missing() {
        let truncated: String = fixture()
            .lines()
            .take_while(|l| !l.contains("Latency"))
            .collect::<Vec<_>>()
            .join("\n");
        let err = parse_output(&truncated).unwrap_err().to_string();
        assert!(err.contains("avg:"), "{err}");
        assert!(parse_output("FATAL: unable to connect").is_err());
    }

    #[test]
    fn cases_name_workload_threads_and_working_set() {
        let run = SysbenchRun {
            workload: "oltp_read_write".into(),
            threads: 4,
            working_set: WorkingSet::Cached,
            backend: "bindfs".into(),
            iteration: 1,
            metrics: parse_output(&fixture()).unwrap(),
        };
        assert_eq!(run.case(), "oltp_read_write t4 cached");
        assert_eq!(run.values()[0], ("tps".to_string(), 95.18));
    }
}
