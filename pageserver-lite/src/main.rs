//! `pageserver-lite`: serves the versioned page store over HTTP (API: `docs/api.md`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ibd_api::server::{serve, RequestMetrics};
use pageserver_lite::http::PageService;
use pageserver_lite::{Store, StoreConfig};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Durable, versioned page store with timelines, served over HTTP"
)]
struct Args {
    /// Address to listen on (port 0 picks a free port; see --addr-file).
    #[arg(long, env = "PAGESERVER_LISTEN", default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// Directory holding segments and the index snapshot (created if missing).
    #[arg(long, env = "PAGESERVER_DATA_DIR")]
    data_dir: PathBuf,
    /// Once listening, write the bound address (`host:port`) to this file.
    #[arg(long)]
    addr_file: Option<PathBuf>,
    /// Seal a segment and start a new one at this size.
    #[arg(long, default_value_t = 64 * 1024)]
    segment_size_kib: u64,
    /// Keep superseded page versions this long (point-in-time reads and branches inside it).
    #[arg(long, default_value_t = 24 * 3600)]
    retention_secs: u64,
    /// Rewrite sealed segments whose live fraction is below this.
    #[arg(long, default_value_t = 0.5)]
    compaction_threshold: f64,
    /// Run GC and compaction this often (0: never in the background).
    #[arg(long, default_value_t = 10_000)]
    maintenance_interval_ms: u64,
    /// Rewrite the index snapshot this often when something changed (0: only at shutdown).
    #[arg(long, default_value_t = 60)]
    snapshot_interval_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    if !(0.0..=1.0).contains(&args.compaction_threshold) {
        anyhow::bail!("--compaction-threshold must be between 0 and 1");
    }
    let config = StoreConfig {
        segment_size: args.segment_size_kib.max(1) * 1024,
        retention: Duration::from_secs(args.retention_secs),
        compaction_threshold: args.compaction_threshold,
        maintenance_interval: (args.maintenance_interval_ms > 0)
            .then(|| Duration::from_millis(args.maintenance_interval_ms)),
        snapshot_interval: (args.snapshot_interval_secs > 0)
            .then(|| Duration::from_secs(args.snapshot_interval_secs)),
        ..StoreConfig::new(&args.data_dir)
    };

    let mut registry = Registry::with_prefix("pageserver");
    let request_metrics = RequestMetrics::register(&mut registry);
    let store = Store::open(config, &mut registry)
        .with_context(|| format!("cannot open the page store in {}", args.data_dir.display()))?;
    let listener = TcpListener::bind(args.listen).await.with_context(|| {
        format!(
            "cannot listen on {} (is another server using that port?)",
            args.listen
        )
    })?;
    let addr = listener.local_addr()?;
    if let Some(path) = &args.addr_file {
        write_addr_file(path, addr).with_context(|| format!("cannot write {}", path.display()))?;
    }
    tracing::info!(%addr, data_dir = %args.data_dir.display(), "pageserver-lite listening");

    let service = Arc::new(PageService::new(store.clone(), Arc::new(registry)));
    serve(listener, service, request_metrics, shutdown_signal()).await?;
    tracing::info!("shutting down: finishing writes, writing the index snapshot");
    store.shutdown().await;
    Ok(())
}

/// Written whole then renamed, so a reader never sees half an address.
fn write_addr_file(path: &Path, addr: SocketAddr) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, addr.to_string())?;
    std::fs::rename(tmp, path)
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler can be installed");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
