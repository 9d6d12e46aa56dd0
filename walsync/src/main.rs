//! The walsync binary: WAL service for `fuse-ibd` (see `docs/api.md`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use ibd_api::server::{serve_threaded, RequestMetrics, ThreadedConfig};
use prometheus_client::registry::Registry;
use walsync::http::WalsyncService;
use walsync::metrics::Metrics;
use walsync::timeline::TimelineConfig;
use walsync::timelines::Timelines;

/// Connections served at once (one thread each); clients keep a few each (a mount: one append
/// stream or a small keep-alive pool), so this bounds threads, not clients. Beyond it a
/// connection is answered `503 busy`.
const MAX_CONNECTIONS: usize = 1024;
/// A connection that sends no request head for this long (idle between requests included) is
/// closed, freeing its thread. Above the clients' 60 s idle-pool timeout, so they close first.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(120);
/// TCP keepalive idle time on accepted connections: a vanished peer's connection (an append
/// stream waits on it indefinitely otherwise) ends about 30 s after this.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Durable, LSN-addressed WAL service with checkpoints and writer terms"
)]
struct Args {
    /// Address to listen on (port 0 picks a free port; see --addr-file).
    #[arg(long, env = "WALSYNC_LISTEN", default_value = "127.0.0.1:8082")]
    listen: SocketAddr,
    /// Directory holding the timelines' WAL and metadata (created if missing).
    #[arg(long, env = "WALSYNC_DATA_DIR")]
    data_dir: PathBuf,
    /// Write the bound address (host:port) to this file once listening.
    #[arg(long)]
    addr_file: Option<PathBuf>,
    /// Size at which a new WAL segment file is started.
    #[arg(long, default_value_t = 16 << 20)]
    segment_size: u64,
    /// Keep WAL needed to recover to any point within this many seconds.
    #[arg(long, default_value_t = 24 * 3600)]
    retention_secs: u64,
    /// How often retention runs, in seconds.
    #[arg(long, default_value_t = 60.0)]
    retention_interval_secs: f64,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    // The data directory's lock is held until the process exits: connection threads or a
    // retention pass may still be writing when `run` returns, so the process exits right after
    // it (ending them), and only then does the kernel release the lock. Nothing is dropped on the
    // way out: a restarted walsync never shares the directory with a writer of this one.
    let code = match start(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("Error: {e:?}");
            1
        }
    };
    std::process::exit(code)
}

fn start(args: Args) -> anyhow::Result<()> {
    let interval_ok = args.retention_interval_secs.is_finite() && args.retention_interval_secs > 0.0;
    if args.segment_size == 0 || !interval_ok {
        bail!("--segment-size and --retention-interval-secs must be positive");
    }
    let lock = lock_data_dir(&args.data_dir)?;
    // This runtime only accepts connections, runs retention and waits for signals: each connection
    // is served by its own thread (see `serve_threaded`).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(run(args));
    // Not dropped: dropping the runtime would wait for a retention pass, and the lock must
    // outlive every writer (see `main`).
    std::mem::forget(runtime);
    std::mem::forget(lock);
    result
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut registry = Registry::with_prefix("walsync");
    let request_metrics = RequestMetrics::register(&mut registry);
    let metrics = Metrics::register(&mut registry);
    let config = TimelineConfig {
        segment_size: args.segment_size,
    };
    let timelines = Arc::new(
        Timelines::open(&args.data_dir, config, metrics)
            .with_context(|| format!("cannot open the timelines in {}", args.data_dir.display()))?,
    );

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {} (is another walsync running?)", args.listen))?;
    let addr = listener.local_addr()?;
    if let Some(path) = &args.addr_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, addr.to_string())
            .and_then(|()| std::fs::rename(&tmp, path))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    tracing::info!(%addr, data_dir = %args.data_dir.display(), "walsync listening");

    let retention = tokio::spawn(walsync::retention::run(
        timelines.clone(),
        Duration::from_secs(args.retention_secs),
        Duration::from_secs_f64(args.retention_interval_secs),
    ));
    let service = Arc::new(WalsyncService::new(timelines, registry));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let mut stopped = stop_rx.clone();
    let server = serve_threaded(
        listener,
        service,
        request_metrics,
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        },
        ThreadedConfig {
            max_connections: MAX_CONNECTIONS,
            header_read_timeout: HEADER_READ_TIMEOUT,
            tcp_keepalive: TCP_KEEPALIVE,
            thread_name: "walsync-conn".into(),
        },
    );
    // Append streams are long-lived: give them a moment after the signal, then stop anyway. Every
    // acknowledged byte is already durable, so cutting a stream loses nothing acknowledged.
    let mut signalled = stop_rx;
    tokio::select! {
        result = server => result.context("server failed")?,
        () = async {
            let _ = signalled.wait_for(|s| *s).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        } => tracing::warn!("connections still open 5 s after the shutdown signal; closing them"),
    }
    retention.abort();
    tracing::info!("walsync stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}

/// Creates the data directory and takes an exclusive lock on it, so two walsync processes never
/// write the same WAL.
fn lock_data_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    let path = dir.join("walsync.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("data directory {} is not writable", dir.display()))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    if rc != 0 {
        bail!(
            "data directory {} is in use by another walsync ({})",
            dir.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(file)
}
