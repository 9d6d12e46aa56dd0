//! `fuse-ibd mount`: mounts the datadir in the foreground until SIGTERM/SIGINT or an external
//! unmount, then exits cleanly.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use ebpf_probes::{KernelLatency, PidSource, ProbeConfig};
use fuse_ibd::datadir::{Datadir, MountInfo, Owner};
use fuse_ibd::fuse::{mount_config, FuseAdapter};
use fuse_ibd::metrics::Metrics;
use fuse_ibd::metrics_server::MetricsService;
use fuse_ibd::page_ship::PageShipper;
use fuse_ibd::preflight;
use fuse_ibd::wal_ship::WalShipper;

#[derive(Parser)]
#[command(
    name = "fuse-ibd",
    version,
    about = "FUSE datadir for stock MariaDB with disaggregated storage"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mount the datadir and serve it in the foreground.
    Mount(MountArgs),
}

#[derive(clap::Args)]
struct MountArgs {
    /// Empty directory to mount on: point MariaDB's datadir here.
    #[arg(long)]
    datadir: PathBuf,
    /// Local cache directory (the backing tree lives in <cache-dir>/tree).
    #[arg(long)]
    cache_dir: PathBuf,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9091).
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// FUSE request threads.
    #[arg(long, default_value_t = 8)]
    threads: usize,
    /// pageserver URL: page and generic files are shipped there and their fsyncs wait for it.
    #[arg(long, env = "PAGE_SERVER_URL", requires = "timeline")]
    pageserver: Option<String>,
    /// walsync URL: complete redo is shipped there and fsync of the log waits for it.
    #[arg(long, env = "SAFEKEEPER_URL", requires = "timeline")]
    walsync: Option<String>,
    /// Timeline this mount writes (the mount acquires a new writer term for it).
    #[arg(long)]
    timeline: Option<String>,
    /// Load the eBPF probes on this mount and export `fuse_ibd_kernel_latency_seconds` on
    /// `/metrics` (needs root or CAP_BPF + CAP_PERFMON). Costs about 5 % of a read served from
    /// the page cache (less of slower reads); see ebpf-probes/README.md, "Overhead".
    #[arg(long)]
    ebpf: bool,
    /// mariadbd's pid file, so the probes also trace its syscalls and io_uring requests (followed
    /// across restarts). The syscall tracepoints slow every process's syscalls a little: about
    /// 7-8 % of a page-cache read in all.
    #[arg(long, requires = "ebpf")]
    ebpf_pid_file: Option<PathBuf>,
    /// Size budget of the local cache of page and generic files (e.g. 1GiB, 512MiB). Blocks the
    /// pageserver has durably are evicted past it; blocks not yet uploaded never are, so the
    /// cache may exceed it by the upload queue (at most 256 MiB).
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    cache_size: u64,
    /// How long reads and fsyncs wait through an outage of a storage service before failing
    /// with EIO (e.g. 60s, 500ms).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    remote_timeout: Duration,
}

/// `"512MiB"` -> `(512, "MiB")`; `example` shows the expected form in the error.
fn number_and_unit<'a>(text: &'a str, example: &str) -> Result<(u64, &'a str), String> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number with a unit ({example})"))?;
    Ok((n, unit))
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (n, unit) = number_and_unit(text, "60s, 500ms")?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{text:?}: unknown unit {unit:?} (use ms, s or m)")),
    }
}

fn parse_size(text: &str) -> Result<u64, String> {
    let (n, unit) = number_and_unit(text, "1GiB, 512MiB")?;
    let shift = match unit {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "T" | "TiB" => 40,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use KiB, MiB, GiB or TiB)"
            ))
        }
    };
    n.checked_mul(1 << shift)
        .filter(|&bytes| bytes >= 1 << 20)
        .ok_or_else(|| format!("{text:?}: the cache needs between 1 MiB and 16 EiB"))
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,fuser=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Cmd::Mount(args) => mount(args),
    }
}

fn mount(args: MountArgs) -> Result<()> {
    preflight::check(&args.datadir).context("cannot mount")?;
    let datadir = args.datadir.canonicalize()?;
    std::fs::create_dir_all(&args.cache_dir)
        .with_context(|| format!("cannot create cache dir {}", args.cache_dir.display()))?;
    let cache_dir = args.cache_dir.canonicalize()?;
    // Backing files get exactly the modes MariaDB asks for (the kernel already applied its umask).
    // SAFETY: umask only changes this process's file creation mask.
    unsafe { libc::umask(0) };

    let metrics = Arc::new(Metrics::default());
    let mountpoint = std::fs::metadata(&datadir)?;
    let info = MountInfo {
        datadir: datadir.clone(),
        cache_dir: cache_dir.clone(),
        owner: Owner {
            uid: mountpoint.uid(),
            gid: mountpoint.gid(),
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut core = Datadir::new(cache_dir.join("tree"), info, metrics.clone())?;
    if let (Some(url), Some(timeline)) = (&args.walsync, &args.timeline) {
        let client = ibd_api::walsync::WalsyncClient::new(url)?;
        let shipper = runtime
            .block_on(WalShipper::start(
                client,
                timeline,
                args.remote_timeout,
                metrics.clone(),
            ))
            .with_context(|| format!("walsync at {url} is not usable (is it running?)"))?;
        core = core.with_wal_shipper(shipper);
    }
    if let (Some(url), Some(timeline)) = (&args.pageserver, &args.timeline) {
        let shipper = runtime
            .block_on(PageShipper::start(
                url,
                timeline,
                args.remote_timeout,
                runtime.handle().clone(),
                metrics.clone(),
            ))
            .with_context(|| format!("pageserver at {url} is not usable (is it running?)"))?;
        core = core
            .with_page_shipper(shipper, args.cache_size)
            .context("cannot bring the timeline in line with the cache")?;
    }
    let core = Arc::new(core);
    {
        let core = core.clone();
        std::thread::Builder::new()
            .name("cache-evictor".into())
            .spawn(move || core.run_evictor())?;
    }
    if let Some(addr) = args.metrics {
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(addr))
            .with_context(|| {
                format!("cannot listen on {addr} for metrics (port taken? pick another --metrics)")
            })?;
        tracing::info!(addr = %listener.local_addr()?, "serving /metrics");
        let mut registry = prometheus_client::registry::Registry::default();
        let request_metrics = ibd_api::server::RequestMetrics::register(&mut registry);
        let service = Arc::new(MetricsService {
            metrics: metrics.clone(),
        });
        runtime.spawn(ibd_api::server::serve(
            listener,
            service,
            request_metrics,
            std::future::pending(),
        ));
    }

    let session = fuser::spawn_mount(
        FuseAdapter::new(core, Some(runtime.handle().clone())),
        &datadir,
        &mount_config(&cache_dir, args.threads),
    )
    .with_context(|| format!("mounting {} failed", datadir.display()))?;
    tracing::info!(datadir = %datadir.display(), cache_dir = %cache_dir.display(), "mounted");
    let mut probes_to_release = None;
    if args.ebpf {
        // The probes filter on the mount's device, so they load once it exists.
        let pids = args
            .ebpf_pid_file
            .clone()
            .map_or(PidSource::None, PidSource::PidFile);
        match KernelLatency::load(ProbeConfig::new(&datadir, pids)) {
            Ok(probes) => {
                for (source, status) in probes.sources() {
                    tracing::info!(?source, ?status, "eBPF probe");
                }
                let shared = Arc::new(std::sync::Mutex::new(probes));
                metrics.attach_kernel_latency(shared.clone());
                probes_to_release = Some(shared);
            }
            // Latency attribution is an aid, not a reason to refuse serving the datadir.
            Err(e) => tracing::error!(error = %e, "--ebpf: probes not loaded"),
        }
    }

    let result = runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut poll = tokio::time::interval(std::time::Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break tracing::info!("SIGINT: unmounting"),
                _ = term.recv() => break tracing::info!("SIGTERM: unmounting"),
                _ = poll.tick() => if session.guard.is_finished() {
                    tracing::info!("unmounted from outside");
                    return session.join().context("FUSE session failed");
                },
            }
        }
        unmount(session, &datadir)
    });
    // A lazily detached mount keeps its FUSE thread (and the probes it references) until the
    // process exits, so the probes' pins would outlive us: remove them here.
    if let Some(probes) = probes_to_release {
        let probes = probes.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = probes.remove_pins() {
            tracing::warn!(error = %e, pins = %probes.pin_dir().display(), "cannot remove the BPF pins");
        }
    }
    result
}

/// Unmounts; if the datadir is busy (a server still has files open), detaches it lazily so the
/// daemon can exit and the server sees errors instead of hanging.
fn unmount(session: fuser::BackgroundSession, datadir: &Path) -> Result<()> {
    let Err(e) = session.umount_and_join() else {
        return Ok(());
    };
    tracing::warn!(datadir = %datadir.display(), error = %e, "unmount failed (is mariadbd still running?): detaching lazily");
    let status = Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(datadir)
        .status()?;
    if !status.success() {
        bail!("could not unmount {}", datadir.display());
    }
    Ok(())
}
