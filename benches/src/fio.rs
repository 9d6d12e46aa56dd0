//! The fio suite: the checked-in job files in benches/fio/jobs/ run on every backend, `--output-format=json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::backend::{BackendCost, PreparedBackend};
use crate::process;
use crate::progress::Progress;
use crate::report::Sample;

/// What the fio suite runs; `runtime` etc. reach the job files as IBD_BENCH_* variables.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FioSettings {
    /// benches/fio: prefill.fio, common.inc and jobs/.
    pub fio_dir: PathBuf,
    pub jobs: Vec<String>,
    pub runtime_s: u32,
    pub ramp_s: u32,
    pub file_size_mib: u64,
}

/// One fio job on one backend in one iteration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FioRun {
    pub job: String,
    pub backend: String,
    pub iteration: u32,
    pub metrics: FioMetrics,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FioMetrics {
    /// Reads plus writes per second, all numjobs together.
    pub iops: f64,
    pub read: Option<OpLatency>,
    pub write: Option<OpLatency>,
    pub fdatasync: Option<OpLatency>,
    /// fio's own user+system CPU, percent of one core per job.
    pub fio_cpu_pct: f64,
    /// The backend's daemon and services during the job (ramp included).
    #[serde(flatten)]
    pub backend: BackendCost,
}

/// Latency distribution of one kind of operation: total latency (submission + completion) of
/// reads and writes, and of fdatasync calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpLatency {
    pub count: u64,
    /// (percentile, microseconds), ascending.
    pub percentiles_us: Vec<(f64, f64)>,
}

impl OpLatency {
    pub fn at(&self, percentile: f64) -> Option<f64> {
        self.percentiles_us
            .iter()
            .find(|&&(p, _)| p == percentile)
            .map(|&(_, us)| us)
    }
}

impl FioMetrics {
    pub fn ops(&self) -> [(&'static str, Option<&OpLatency>); 3] {
        [
            ("read", self.read.as_ref()),
            ("write", self.write.as_ref()),
            ("fdatasync", self.fdatasync.as_ref()),
        ]
    }
}

/// The percentiles shown in tables (the CDF plots use all of them).
pub const HEADLINE_PERCENTILES: [f64; 3] = [50.0, 99.0, 99.9];

impl Sample for FioRun {
    fn case(&self) -> String {
        self.job.clone()
    }

    fn backend(&self) -> &str {
        &self.backend
    }

    fn values(&self) -> Vec<(String, f64)> {
        let mut values = vec![("iops".to_string(), self.metrics.iops)];
        for (op, latency) in self.metrics.ops() {
            for p in HEADLINE_PERCENTILES {
                if let Some(us) = latency.and_then(|l| l.at(p)) {
                    values.push((format!("{op} p{p} µs"), us));
                }
            }
        }
        values.push(("fio CPU %".to_string(), self.metrics.fio_cpu_pct));
        values.extend(self.metrics.backend.values());
        values
    }
}

fn jobs_dir(fio_dir: &Path) -> PathBuf {
    fio_dir.join("jobs")
}

/// Job names (file stems) in `fio_dir`/jobs, sorted.
pub fn available_jobs(fio_dir: &Path) -> Result<Vec<String>> {
    let job_dir = jobs_dir(fio_dir);
    let mut jobs = Vec::new();
    for entry in std::fs::read_dir(&job_dir).with_context(|| format!("cannot list {}", job_dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "fio") {
            jobs.extend(path.file_stem().and_then(|s| s.to_str()).map(str::to_string));
        }
    }
    jobs.sort();
    Ok(jobs)
}

/// The benchmark file in each backend's directory: a tablespace name, so fuse-ibd serves it
/// like InnoDB's data files.
const FILE_NAME: &str = "fio-bench.ibd";

/// Runs every job on every backend, `iterations` times, alternating backends job by job so
/// that drift on the machine hits all backends alike. Cold backends get a fresh node before
/// each job. The file is deleted at the end: MariaDB's datadir is the same directory.
pub fn run_suite(
    settings: &FioSettings,
    backends: &mut [PreparedBackend],
    iterations: u32,
    raw_dir: &Path,
    failed_steps: &mut Vec<String>,
) -> Result<Vec<FioRun>> {
    std::fs::create_dir_all(raw_dir)?;
    let mut progress = Progress::new("fio", iterations as usize * settings.jobs.len() * backends.len());
    for backend in backends.iter() {
        progress.note(&format!(
            "laying out {} MiB on {}",
            settings.file_size_mib, backend.name
        ));
        let log = raw_dir.join(format!("prefill-{}.log", backend.name));
        let mut command = fio_command(settings, backend, &settings.fio_dir.join("prefill.fio"));
        process::run_logged(&mut command, "fio prefill", &log, Duration::from_secs(3600))?;
    }
    let mut runs = Vec::new();
    for iteration in 1..=iterations {
        for job in &settings.jobs {
            for backend in backends.iter_mut() {
                process::check_interrupted()?;
                backend
                    .fresh_node()
                    .with_context(|| format!("mounting a fresh node of {}", backend.name))?;
                let step = format!("{job} on {} (iteration {iteration}/{iterations})", backend.name);
                match run_job(settings, job, backend, iteration, raw_dir) {
                    Ok(run) => {
                        progress.step_done(&step, &describe(&run.metrics));
                        runs.push(run);
                    }
                    Err(error) => progress.step_failed(&step, &error, failed_steps)?,
                }
            }
        }
    }
    for backend in backends.iter() {
        std::fs::remove_file(backend.dir.join(FILE_NAME))
            .with_context(|| format!("deleting the fio file on {}", backend.name))?;
    }
    Ok(runs)
}

fn run_job(
    settings: &FioSettings,
    job: &str,
    backend: &PreparedBackend,
    iteration: u32,
    raw_dir: &Path,
) -> Result<FioRun> {
    let stem = format!("{job}-{}-{iteration}", backend.name);
    let json_path = raw_dir.join(format!("{stem}.json"));
    let mut command = fio_command(
        settings,
        backend,
        &jobs_dir(&settings.fio_dir).join(format!("{job}.fio")),
    );
    command
        .arg("--output-format=json")
        .arg(format!("--output={}", json_path.display()));
    backend.settle()?;
    let cost = backend.cost_meter()?;
    let timeout = Duration::from_secs(u64::from(settings.runtime_s + settings.ramp_s) + 120);
    process::run_logged(&mut command, "fio", &raw_dir.join(format!("{stem}.log")), timeout)?;
    let mut metrics = parse_output(&std::fs::read_to_string(&json_path)?)?;
    metrics.backend = cost.finish()?;
    Ok(FioRun {
        job: job.to_string(),
        backend: backend.name.to_string(),
        iteration,
        metrics,
    })
}

fn fio_command(settings: &FioSettings, backend: &PreparedBackend, job_file: &Path) -> Command {
    let mut command = Command::new("fio");
    command
        .arg(job_file)
        .env("IBD_BENCH_FILE", backend.dir.join(FILE_NAME))
        .env("IBD_BENCH_FILE_SIZE", format!("{}m", settings.file_size_mib))
        .env("IBD_BENCH_RUNTIME", settings.runtime_s.to_string())
        .env("IBD_BENCH_RAMP", settings.ramp_s.to_string());
    command
}

fn describe(metrics: &FioMetrics) -> String {
    let mut out = format!("{:.0} IOPS", metrics.iops);
    for (op, latency) in metrics.ops() {
        if let Some(p50) = latency.and_then(|l| l.at(50.0)) {
            out.push_str(&format!(", {op} p50 {p50:.0} µs"));
        }
    }
    out.push_str(&metrics.backend.describe());
    out
}

// The parts of fio's JSON output this suite reads.
#[derive(Deserialize)]
struct FioOutput {
    jobs: Vec<FioJobOutput>,
}

#[derive(Deserialize)]
struct FioJobOutput {
    jobname: String,
    error: i64,
    read: FioRwOutput,
    write: FioRwOutput,
    sync: FioSyncOutput,
    usr_cpu: f64,
    sys_cpu: f64,
}

#[derive(Deserialize)]
struct FioRwOutput {
    iops: f64,
    total_ios: u64,
    /// Total latency (submission + completion); common.inc asks for its percentiles.
    lat_ns: FioLatencyOutput,
}

#[derive(Deserialize)]
struct FioSyncOutput {
    lat_ns: FioLatencyOutput,
}

#[derive(Deserialize)]
struct FioLatencyOutput {
    #[serde(rename = "N", default)]
    count: u64,
    /// Keys are percentiles formatted like "99.900000".
    #[serde(default)]
    percentile: BTreeMap<String, f64>,
}

impl FioLatencyOutput {
    fn to_latency(&self, count: u64) -> Result<Option<OpLatency>> {
        if count == 0 {
            return Ok(None);
        }
        let mut percentiles_us = self
            .percentile
            .iter()
            .map(|(p, ns)| {
                Ok((
                    p.parse::<f64>()
                        .with_context(|| format!("bad percentile {p:?}"))?,
                    ns / 1000.0,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        percentiles_us.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(Some(OpLatency {
            count,
            percentiles_us,
        }))
    }
}

/// Reads fio's JSON (one job entry: the job files use group_reporting). The backend's cost is not in it.
pub fn parse_output(json: &str) -> Result<FioMetrics> {
    let output: FioOutput = serde_json::from_str(json).context("fio output is not the expected JSON")?;
    let [job] = output.jobs.as_slice() else {
        bail!(
            "expected one job entry (group_reporting), found {}",
            output.jobs.len()
        );
    };
    if job.error != 0 {
        bail!("fio job {} reported error {}", job.jobname, job.error);
    }
    Ok(FioMetrics {
        iops: job.read.iops + job.write.iops,
        read: job.read.lat_ns.to_latency(job.read.total_ios)?,
        write: job.write.lat_ns.to_latency(job.write.total_ios)?,
        // fio counts syncs in lat_ns.N; sync.total_ios stays 0.
        fdatasync: job.sync.lat_ns.to_latency(job.sync.lat_ns.count)?,
        fio_cpu_pct: job.usr_cpu + job.sys_cpu,
        backend: BackendCost::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata").join(name);
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn parses_a_mixed_read_write_job() -> Result<()> {
        let metrics = parse_output(&fixture("fio-randrw-io_uring-qd16-j4.json"))?;
        let (read, write) = (metrics.read.as_ref().unwrap(), metrics.write.as_ref().unwrap());
        assert!((metrics.iops - (33152.347652 + 14292.207792)).abs() < 1e-6);
        assert_eq!(read.count, 66371);
        assert_eq!(write.count, 28613);
        assert_eq!(read.percentiles_us.len(), 16);
        assert_eq!(read.at(1.0), Some(522.24));
        assert!(read.at(50.0).unwrap() <= read.at(99.0).unwrap());
        assert!(read.at(99.0).unwrap() <= read.at(99.9).unwrap());
        assert_eq!(metrics.fdatasync, None);
        assert!((metrics.fio_cpu_pct - (1.399825 + 6.136733)).abs() < 1e-9);
        Ok(())
    }

    #[test]
    fn parses_fdatasync_latency_of_a_commit_like_job() -> Result<()> {
        let metrics = parse_output(&fixture("fio-commit-fdatasync-j1.json"))?;
        assert_eq!(metrics.read, None);
        assert_eq!(metrics.write.as_ref().unwrap().at(1.0), Some(39.68));
        let sync = metrics.fdatasync.as_ref().unwrap();
        assert_eq!(sync.count, 6097);
        assert_eq!(sync.at(50.0), Some(44.8));
        assert_eq!(sync.at(99.99), Some(100139.008));
        Ok(())
    }

    #[test]
    fn sample_values_name_each_op_and_percentile() -> Result<()> {
        let run = FioRun {
            job: "commit".into(),
            backend: "native".into(),
            iteration: 1,
            metrics: parse_output(&fixture("fio-commit-fdatasync-j1.json"))?,
        };
        let names: Vec<String> = run.values().into_iter().map(|(name, _)| name).collect();
        assert_eq!(names[0], "iops");
        assert!(names.contains(&"fdatasync p99.9 µs".to_string()), "{names:?}");
        assert!(!names.iter().any(|n| n.starts_with("read")));
        Ok(())
    }

    #[test]
    fn rejects_failed_jobs_and_other_json() {
        let failed = fixture("fio-commit-fdatasync-j1.json").replacen("\"error\" : 0", "\"error\" : 5", 1);
        assert!(parse_output(&failed).unwrap_err().to_string().contains("error 5"));
        assert!(parse_output("{\"jobs\": []}").is_err());
        assert!(parse_output("fio: pid=1, err=2").is_err());
    }

    #[test]
    fn every_checked_in_job_is_found() -> Result<()> {
        let jobs = available_jobs(&Path::new(env!("CARGO_MANIFEST_DIR")).join("fio"))?;
        assert_eq!(jobs.len(), 20);
        assert!(jobs.contains(&"randread-psync-qd1-j1".to_string()));
        assert!(jobs.contains(&"commit-fdatasync-j4".to_string()));
        Ok(())
    }
}
