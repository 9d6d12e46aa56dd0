//! `ibd-benches`: runs the same fio jobs, sysbench workloads and recovery measurements on
//! several storage backends, side by side, and writes a report. See benches/README.md.

mod backend;
mod fio;
mod mariadb;
mod plot;
mod process;
mod progress;
mod recovery;
mod remote;
mod report;
mod stats;
mod stubfs;
mod sysbench;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};

use crate::backend::PreparedBackend;
use crate::remote::FuseIbdBinaries;
use crate::report::{BackendInfo, Environment, Results, SuiteResults};

#[derive(Parser)]
#[command(
    version,
    about = "fio and sysbench comparisons of storage backends against the local disk"
)]
struct Cli {
    suite: Suite,
    /// Smoke check in under 3 minutes: few short jobs, small data, one iteration. Never judge speed from it.
    #[arg(long)]
    quick: bool,
    /// Iterations per (job, backend) [default: 3, quick: 1].
    #[arg(long)]
    iterations: Option<u32>,
    /// Backends to compare, run in this order within an iteration; ratios are taken against `native`.
    #[arg(long, value_delimiter = ',', default_value = "native,bindfs")]
    backends: Vec<String>,
    /// Report directory [default: benches/results/<YYYY-MM-DD-HHMMSS>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where backends put their data; must be on the local disk under test.
    #[arg(long, default_value = "/var/tmp")]
    work_dir: PathBuf,
    /// fuse-ibd binary for the fuse-ibd backends and recovery; pageserver-lite and walsync are taken from the same directory [default: beside this runner (same target dir), else `fuse-ibd` on PATH, else this workspace's target/release/fuse-ibd].
    #[arg(long)]
    fuse_ibd_bin: Option<PathBuf>,

    /// fio jobs to run, by file name without .fio [default: all in benches/fio/jobs; quick: 4 of them].
    #[arg(long, value_delimiter = ',')]
    fio_jobs: Vec<String>,
    /// Seconds each fio job measures [default: 20, quick: 3].
    #[arg(long)]
    fio_runtime: Option<u32>,
    /// Seconds each fio job runs before measuring [default: 5, quick: 1].
    #[arg(long)]
    fio_ramp: Option<u32>,
    /// Size of the preallocated fio file per backend [default: 1024, quick: 64].
    #[arg(long)]
    fio_file_size_mib: Option<u64>,

    /// sysbench workloads [default: oltp_read_only,oltp_read_write,oltp_write_only,oltp_insert; quick: the first two].
    #[arg(long, value_delimiter = ',')]
    sysbench_workloads: Vec<String>,
    /// sysbench thread counts [default: 1,4; quick: 1].
    #[arg(long, value_delimiter = ',')]
    sysbench_threads: Vec<u32>,
    /// Seconds per sysbench run [default: 30, quick: 3].
    #[arg(long)]
    sysbench_runtime: Option<u32>,
    /// sysbench tables [default: 4, quick: 1].
    #[arg(long)]
    sysbench_tables: Option<u32>,
    /// Rows per sysbench table [default: 250000 (about 450 MiB in all), quick: 20000].
    #[arg(long)]
    sysbench_table_size: Option<u64>,
    /// Buffer pool that holds all the data [default: 2048, quick: 64].
    #[arg(long)]
    cached_buffer_pool_mib: Option<u64>,
    /// Buffer pool much smaller than the data [default: 64, quick: 6 (InnoDB's minimum)].
    #[arg(long)]
    uncached_buffer_pool_mib: Option<u64>,

    /// Data sizes for the recovery measurement [default: 1024,10240; quick: 32].
    #[arg(long, value_delimiter = ',')]
    recovery_sizes_mib: Vec<u64>,
    /// Ways back after losing the local disk: mariadb-backup (restore, the baseline), fuse-ibd-fresh-node.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "mariadb-backup,fuse-ibd-fresh-node"
    )]
    recovery_methods: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Suite {
    Fio,
    Sysbench,
    Recovery,
    /// fio, then sysbench, then recovery.
    All,
}

impl Suite {
    fn includes(self, suite: Suite) -> bool {
        self == suite || self == Suite::All
    }
}

/// The quick-mode fio jobs: one of each kind, enough to exercise every parsing path.
const QUICK_FIO_JOBS: &[&str] = &[
    "randread-psync-qd1-j1",
    "randwrite-io_uring-qd16-j1",
    "randrw-io_uring-qd16-j4",
    "commit-fdatasync-j1",
];
const SYSBENCH_WORKLOADS: &[&str] = &[
    "oltp_read_only",
    "oltp_read_write",
    "oltp_write_only",
    "oltp_insert",
];

/// The given value, else the quick or the full default.
fn pick<T>(given: Option<T>, quick: bool, quick_default: T, full_default: T) -> T {
    given.unwrap_or(if quick { quick_default } else { full_default })
}

/// The given list, else the quick or the full default.
fn pick_list<T: Clone>(given: &[T], quick: bool, quick_default: &[T], full_default: &[T]) -> Vec<T> {
    let list = if !given.is_empty() {
        given
    } else if quick {
        quick_default
    } else {
        full_default
    };
    list.to_vec()
}

fn main() {
    // The fuse-ibd-stub backend runs this same binary as its FUSE daemon.
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|arg| arg == stubfs::SUBCOMMAND) {
        let result = args
            .next()
            .context("usage: ibd-benches __serve-stub-fs <mountpoint>")
            .and_then(|mountpoint| stubfs::serve(Path::new(&mountpoint)));
        if let Err(err) = result {
            eprintln!("error: {err:#}");
            std::process::exit(1);
        }
        return;
    }
    let cli = Cli::parse();
    if let Err(err) = process::install_interrupt_handler().and_then(|()| run(&cli)) {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

fn run(cli: &Cli) -> Result<()> {
    let started = Instant::now();
    let (stamp, started_at) = utc_now()?;
    let quick = cli.quick;
    let iterations = pick(cli.iterations, quick, 1, 3);
    if iterations == 0 {
        bail!("--iterations must be at least 1");
    }
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = cli
        .out
        .clone()
        .unwrap_or_else(|| manifest_dir.join("results").join(stamp));
    let raw_dir = out.join("raw");
    let fuse_ibd = FuseIbdBinaries::beside(
        &cli.fuse_ibd_bin
            .clone()
            .unwrap_or_else(|| default_fuse_ibd_bin(manifest_dir)),
    );
    let needs_backends = cli.suite.includes(Suite::Fio) || cli.suite.includes(Suite::Sysbench);
    let backends = if needs_backends {
        selected_backends(cli, &fuse_ibd)?
    } else {
        Vec::new()
    };
    require_tools(cli, needs_backends)?;
    // All settings are checked before anything is mounted or loaded.
    let fio_settings = cli
        .suite
        .includes(Suite::Fio)
        .then(|| fio_settings(cli, manifest_dir))
        .transpose()?;
    let sysbench_settings = cli
        .suite
        .includes(Suite::Sysbench)
        .then(|| sysbench_settings(cli));
    let recovery_settings = cli
        .suite
        .includes(Suite::Recovery)
        .then(|| recovery_settings(cli, &fuse_ibd))
        .transpose()?;

    std::fs::create_dir_all(&cli.work_dir)?;
    let work = tempfile::Builder::new()
        .prefix("ibd-bench-")
        .tempdir_in(&cli.work_dir)?;
    let environment = environment(&cli.work_dir)?;
    if environment.work_dir_filesystem == "tmpfs" {
        eprintln!(
            "warning: {} is tmpfs: `native` will measure memory, not a disk",
            cli.work_dir.display()
        );
    }
    eprintln!("results will go to {}", out.display());
    // Declared after `work` so they are torn down (unmounted) before it is deleted.
    let mut prepared: Vec<PreparedBackend> = backends
        .iter()
        .map(|backend| {
            let root = work.path().join(backend.name());
            std::fs::create_dir(&root)?;
            backend
                .prepare(&root)
                .with_context(|| format!("preparing backend {}", backend.name()))
        })
        .collect::<Result<_>>()?;

    let mut results = Results {
        started_at,
        duration_s: 0.0,
        quick,
        iterations,
        environment,
        backends: backends
            .iter()
            .map(|b| BackendInfo {
                name: b.name().to_string(),
                description: b.describe(),
            })
            .collect(),
        fio: None,
        sysbench: None,
        recovery: None,
        failed_steps: Vec::new(),
    };
    if let Some(settings) = fio_settings {
        let runs = fio::run_suite(
            &settings,
            &mut prepared,
            iterations,
            &raw_dir.join("fio"),
            &mut results.failed_steps,
        )?;
        results.fio = Some(SuiteResults::new(settings, runs));
    }
    if let Some(mut settings) = sysbench_settings {
        let runs = sysbench::run_suite(
            &mut settings,
            &mut prepared,
            iterations,
            work.path(),
            &raw_dir.join("sysbench"),
            &mut results.failed_steps,
        )?;
        results.sysbench = Some(SuiteResults::new(settings, runs));
    }
    if let Some(mut settings) = recovery_settings {
        let runs = recovery::run_suite(
            &mut settings,
            iterations,
            work.path(),
            &raw_dir.join("recovery"),
            &fuse_ibd,
        )?;
        results.recovery = Some(SuiteResults::new(settings, runs));
    }
    results.duration_s = started.elapsed().as_secs_f64();
    report::write(&results, &out)?;
    eprintln!("report: {}", out.join("summary.md").display());
    Ok(())
}

/// The `--backends`, checked; the fuse-ibd binaries they need must exist before anything is set up.
fn selected_backends(cli: &Cli, fuse_ibd: &FuseIbdBinaries) -> Result<Vec<Box<dyn backend::Backend>>> {
    check_backend_names(&cli.backends)?;
    cli.backends
        .iter()
        .map(|name| backend::by_name(name, fuse_ibd))
        .collect()
}

fn fio_settings(cli: &Cli, manifest_dir: &Path) -> Result<fio::FioSettings> {
    let quick = cli.quick;
    let fio_dir = manifest_dir.join("fio");
    let all_jobs = fio::available_jobs(&fio_dir)?;
    let jobs = pick_list(&cli.fio_jobs, quick, &to_strings(QUICK_FIO_JOBS), &all_jobs);
    if let Some(unknown) = jobs.iter().find(|job| !all_jobs.contains(job)) {
        bail!("no fio job {unknown:?}; available: {}", all_jobs.join(", "));
    }
    Ok(fio::FioSettings {
        fio_dir,
        jobs,
        runtime_s: pick(cli.fio_runtime, quick, 3, 20),
        ramp_s: pick(cli.fio_ramp, quick, 1, 5),
        file_size_mib: pick(cli.fio_file_size_mib, quick, 64, 1024),
    })
}

fn sysbench_settings(cli: &Cli) -> sysbench::SysbenchSettings {
    let quick = cli.quick;
    sysbench::SysbenchSettings {
        workloads: pick_list(
            &cli.sysbench_workloads,
            quick,
            &to_strings(&SYSBENCH_WORKLOADS[..2]),
            &to_strings(SYSBENCH_WORKLOADS),
        ),
        threads: pick_list(&cli.sysbench_threads, quick, &[1], &[1, 4]),
        tables: pick(cli.sysbench_tables, quick, 1, 4),
        table_size: pick(cli.sysbench_table_size, quick, 20_000, 250_000),
        runtime_s: pick(cli.sysbench_runtime, quick, 3, 30),
        cached_buffer_pool_mib: pick(cli.cached_buffer_pool_mib, quick, 64, 2048),
        uncached_buffer_pool_mib: pick(cli.uncached_buffer_pool_mib, quick, 6, 64),
        data_mib: 0.0,
        server_args: Vec::new(),
        client_args: Vec::new(),
        aio_by_backend: Vec::new(),
    }
}

fn recovery_settings(cli: &Cli, fuse_ibd: &FuseIbdBinaries) -> Result<recovery::RecoverySettings> {
    let methods = cli.recovery_methods.clone();
    for (i, method) in methods.iter().enumerate() {
        if !recovery::METHODS.contains(&method.as_str()) {
            bail!(
                "no recovery method {method:?}; available: {}",
                recovery::METHODS.join(", ")
            );
        }
        if methods[..i].contains(method) {
            bail!("recovery method {method} given twice");
        }
    }
    if methods.iter().any(|m| m == recovery::FRESH_NODE) {
        fuse_ibd
            .check(true)
            .context("recovery method fuse-ibd-fresh-node")?;
    }
    Ok(recovery::RecoverySettings {
        sizes_mib: pick_list(&cli.recovery_sizes_mib, cli.quick, &[32], &[1024, 10240]),
        methods,
        buffer_pool_mib: 256,
        first_query: recovery::FIRST_QUERY.to_string(),
        full_scan: recovery::FULL_SCAN.to_string(),
        server_args: Vec::new(),
    })
}

fn to_strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn check_backend_names(names: &[String]) -> Result<()> {
    for (i, name) in names.iter().enumerate() {
        if names[..i].contains(name) {
            bail!("backend {name} given twice");
        }
    }
    if !names.iter().any(|name| name == report::BASELINE) {
        eprintln!(
            "warning: no `{}` backend: the report will have no ratios",
            report::BASELINE
        );
    }
    Ok(())
}

/// The fuse-ibd built with this runner first (`cargo build --release -p ibd-benches -p fuse-ibd
/// ...` puts both in one target dir, whatever CARGO_TARGET_DIR says), so a run measures the
/// fuse-ibd of the checked-out source rather than an older one installed elsewhere.
fn default_fuse_ibd_bin(manifest_dir: &Path) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("fuse-ibd")))
        .filter(|candidate| candidate.is_file())
        .or_else(|| find_on_path("fuse-ibd"))
        .unwrap_or_else(|| manifest_dir.join("../target/release/fuse-ibd"))
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Fails early, naming the missing programs, instead of minutes into a run.
fn require_tools(cli: &Cli, needs_backends: bool) -> Result<()> {
    let suite = cli.suite;
    let mut tools = Vec::new();
    if suite.includes(Suite::Fio) {
        tools.push("fio");
    }
    if suite.includes(Suite::Sysbench) {
        tools.extend(["sysbench", "mariadbd", "mariadb-install-db", "mariadb"]);
    }
    if suite.includes(Suite::Recovery) {
        tools.extend(["mariadbd", "mariadb-install-db", "mariadb", "mariadb-backup"]);
    }
    if needs_backends && cli.backends.iter().any(|b| b == "bindfs") {
        tools.push("bindfs");
    }
    // Every backend but native is a FUSE mount; so is the fresh node of the recovery suite.
    let fresh_node =
        suite.includes(Suite::Recovery) && cli.recovery_methods.iter().any(|m| m == recovery::FRESH_NODE);
    if (needs_backends && cli.backends.iter().any(|b| b != report::BASELINE)) || fresh_node {
        tools.push("fusermount3");
    }
    let missing: Vec<&str> = tools
        .into_iter()
        .filter(|tool| find_on_path(tool).is_none())
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing programs: {} (scripts/setup.sh installs them)",
            missing.join(", ")
        );
    }
    Ok(())
}

fn environment(work_dir: &Path) -> Result<Environment> {
    let mut tools = BTreeMap::new();
    for (tool, arg) in [
        ("fio", "--version"),
        ("sysbench", "--version"),
        ("bindfs", "--version"),
        ("mariadbd", "--version"),
        ("mariadb-backup", "--version"),
    ] {
        tools.insert(tool.to_string(), tool_version(tool, arg));
    }
    Ok(Environment {
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        work_dir: work_dir.display().to_string(),
        work_dir_filesystem: backend::filesystem_type(work_dir)?,
        tools,
    })
}

/// First line a tool prints for `--version` (some print it on stderr).
fn tool_version(tool: &str, arg: &str) -> String {
    match std::process::Command::new(tool).arg(arg).output() {
        Ok(out) => {
            let text = if out.stdout.is_empty() {
                out.stderr
            } else {
                out.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        }
        Err(_) => "not installed".to_string(),
    }
}

/// ("YYYY-MM-DD-HHMMSS" for the results directory, "YYYY-MM-DD HH:MM:SS UTC" for the report).
fn utc_now() -> Result<(String, String)> {
    // SAFETY: time(NULL) and gmtime_r with valid pointers have no other preconditions.
    let tm = unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::gmtime_r(&now, &mut tm).is_null() {
            bail!("cannot read the clock");
        }
        tm
    };
    let (date, time) = (
        format!("{:04}-{:02}-{:02}", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday),
        [tm.tm_hour, tm.tm_min, tm.tm_sec],
    );
    Ok((
        format!("{date}-{:02}{:02}{:02}", time[0], time[1], time[2]),
        format!("{date} {:02}:{:02}:{:02} UTC", time[0], time[1], time[2]),
    ))
}
