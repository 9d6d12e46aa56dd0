//! `fuse_ibd_*` metrics: per-operation latency and errors (recorded by the FUSE adapter) and
//! I/O volume by file kind (recorded by the core). The same counters feed `.fuse-ibd/status`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use ebpf_probes::{KernelLatency, KernelLatencyCollector};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::kind::FileKind;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    op: &'static str,
    errno: i32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: &'static str,
}

/// The storage service a remote call went to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Pageserver,
    Walsync,
}

impl Service {
    fn label(self) -> ServiceLabels {
        ServiceLabels {
            service: match self {
                Service::Pageserver => "pageserver",
                Service::Walsync => "walsync",
            },
        }
    }
}

type IntGauge = Gauge<i64, std::sync::atomic::AtomicI64>;

/// Latency buckets from 1 us to ~17 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1e-6, 2.0, 25))
}

const KINDS: [FileKind; 4] = [
    FileKind::Page,
    FileKind::Redo,
    FileKind::Generic,
    FileKind::Scratch,
];

/// `fuse_ibd_kernel_latency_seconds{source,op}` from the eBPF probes (`--ebpf`): registered at
/// start-up, filled once the probes are loaded on the mounted datadir.
#[derive(Debug, Default)]
struct KernelLatencyExport {
    probes: OnceLock<KernelLatencyCollector>,
}

impl Collector for KernelLatencyExport {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        match self.probes.get() {
            Some(collector) => collector.encode(encoder),
            None => Ok(()),
        }
    }
}

pub struct Metrics {
    /// Root registry: our metrics live under its `fuse_ibd` prefix; the kernel histograms carry
    /// their full name.
    registry: Registry,
    kernel_latency: Arc<KernelLatencyExport>,
    op_duration: Family<OpLabels, Histogram>,
    op_errors: Family<ErrorLabels, Counter>,
    reads: Family<KindLabels, Counter>,
    read_bytes: Family<KindLabels, Counter>,
    writes: Family<KindLabels, Counter>,
    written_bytes: Family<KindLabels, Counter>,
    fsyncs: Family<KindLabels, Counter>,
    redo_complete_lsn: Gauge<i64, std::sync::atomic::AtomicI64>,
    redo_checkpoint_lsn: Gauge<i64, std::sync::atomic::AtomicI64>,
    redo_complete_bytes: Counter,
    redo_mtrs: Counter,
    cache: CacheMetrics,
    remote: RemoteMetrics,
    /// Requests answered EIO, over all operations (`op_errors` has them by operation).
    io_errors: AtomicU64,
}

/// The local page cache of shipped files.
#[derive(Default)]
struct CacheMetrics {
    hits: Counter,
    misses: Counter,
    evictions: Counter,
    resident_bytes: IntGauge,
    budget_bytes: IntGauge,
}

/// Traffic with the storage services.
struct RemoteMetrics {
    fetch_duration: Histogram,
    /// Count and total time of fetches, for the status file's mean (the histogram keeps its
    /// sum to itself).
    fetches: AtomicU64,
    fetch_us: AtomicU64,
    fetched_pages: Counter,
    upload_duration: Histogram,
    uploaded_pages: Counter,
    upload_queue_pages: IntGauge,
    upload_queue_bytes: IntGauge,
    errors: Family<ServiceLabels, Counter>,
    wal_shipped_lsn: IntGauge,
    wal_durable_lsn: IntGauge,
}

impl Default for RemoteMetrics {
    fn default() -> Self {
        Self {
            fetch_duration: latency_histogram(),
            fetches: AtomicU64::new(0),
            fetch_us: AtomicU64::new(0),
            fetched_pages: Counter::default(),
            upload_duration: latency_histogram(),
            uploaded_pages: Counter::default(),
            upload_queue_pages: IntGauge::default(),
            upload_queue_bytes: IntGauge::default(),
            errors: Family::default(),
            wal_shipped_lsn: IntGauge::default(),
            wal_durable_lsn: IntGauge::default(),
        }
    }
}

impl CacheMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "cache_hits",
            "Reads of shipped files answered from the local cache",
            self.hits.clone(),
        );
        registry.register(
            "cache_misses",
            "Reads of shipped files that had to fetch pages from the pageserver",
            self.misses.clone(),
        );
        registry.register(
            "cache_evictions",
            "Clean pages dropped from the local cache to stay within --cache-size",
            self.evictions.clone(),
        );
        registry.register(
            "cache_resident_bytes",
            "Bytes of shipped files held in the local cache",
            self.resident_bytes.clone(),
        );
        registry.register(
            "cache_budget_bytes",
            "The local cache's size budget (--cache-size)",
            self.budget_bytes.clone(),
        );
    }
}

impl RemoteMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "remote_fetch_duration_seconds",
            "Time to fetch a batch of pages from the pageserver, retries included",
            self.fetch_duration.clone(),
        );
        registry.register(
            "remote_fetched_pages",
            "Pages fetched from the pageserver",
            self.fetched_pages.clone(),
        );
        registry.register(
            "upload_duration_seconds",
            "Time to make a batch of pages durable on the pageserver, retries included",
            self.upload_duration.clone(),
        );
        registry.register(
            "uploaded_pages",
            "Pages made durable on the pageserver",
            self.uploaded_pages.clone(),
        );
        registry.register(
            "upload_queue_pages",
            "Pages written locally and not yet durable on the pageserver",
            self.upload_queue_pages.clone(),
        );
        registry.register(
            "upload_queue_bytes",
            "Bytes written locally and not yet durable on the pageserver",
            self.upload_queue_bytes.clone(),
        );
        registry.register(
            "remote_errors",
            "Calls to a storage service that failed after their retries",
            self.errors.clone(),
        );
        registry.register(
            "wal_shipped_lsn",
            "End LSN of the redo handed to walsync",
            self.wal_shipped_lsn.clone(),
        );
        registry.register(
            "wal_durable_lsn",
            "walsync's durable LSN as last acknowledged",
            self.wal_durable_lsn.clone(),
        );
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut root = Registry::default();
        let kernel_latency = Arc::new(KernelLatencyExport::default());
        root.register_collector(Box::new(kernel_latency.clone()));
        let registry = root.sub_registry_with_prefix("fuse_ibd");
        let op_duration = Family::<OpLabels, Histogram>::new_with_constructor(latency_histogram);
        let op_errors = Family::<ErrorLabels, Counter>::default();
        let [reads, read_bytes, writes, written_bytes, fsyncs] =
            std::array::from_fn(|_| Family::<KindLabels, Counter>::default());
        registry.register(
            "op_duration_seconds",
            "Time the daemon spent answering a FUSE request, by operation",
            op_duration.clone(),
        );
        registry.register(
            "op_errors",
            "FUSE requests answered with an error, by operation and errno",
            op_errors.clone(),
        );
        registry.register("reads", "Read requests, by file kind", reads.clone());
        registry.register("read_bytes", "Bytes read, by file kind", read_bytes.clone());
        registry.register("writes", "Write requests, by file kind", writes.clone());
        registry.register(
            "written_bytes",
            "Bytes written, by file kind",
            written_bytes.clone(),
        );
        registry.register(
            "fsyncs",
            "fsync/fdatasync requests made durable, by file kind",
            fsyncs.clone(),
        );
        let (redo_complete_lsn, redo_checkpoint_lsn) = (Gauge::default(), Gauge::default());
        let (redo_complete_bytes, redo_mtrs) = (Counter::default(), Counter::default());
        registry.register(
            "redo_complete_lsn",
            "End LSN of the last complete, CRC-valid mini-transaction written to the redo log",
            redo_complete_lsn.clone(),
        );
        registry.register(
            "redo_checkpoint_lsn",
            "Latest checkpoint LSN written to the redo log",
            redo_checkpoint_lsn.clone(),
        );
        registry.register(
            "redo_complete_bytes",
            "Bytes of complete mini-transactions seen in the redo log",
            redo_complete_bytes.clone(),
        );
        registry.register(
            "redo_mtrs",
            "Complete mini-transactions seen in the redo log",
            redo_mtrs.clone(),
        );
        let (cache, remote) = (CacheMetrics::default(), RemoteMetrics::default());
        cache.register(registry);
        remote.register(registry);
        Self {
            registry: root,
            kernel_latency,
            op_duration,
            op_errors,
            reads,
            read_bytes,
            writes,
            written_bytes,
            fsyncs,
            redo_complete_lsn,
            redo_checkpoint_lsn,
            redo_complete_bytes,
            redo_mtrs,
            cache,
            remote,
            io_errors: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Exports the probes' histograms from now on (`--ebpf`).
    pub fn attach_kernel_latency(&self, probes: Arc<Mutex<KernelLatency>>) {
        let _ = self
            .kernel_latency
            .probes
            .set(KernelLatencyCollector::new(probes));
    }

    pub fn record_op(&self, op: &'static str, seconds: f64, errno: Option<i32>) {
        self.op_duration.get_or_create(&OpLabels { op }).observe(seconds);
        if let Some(errno) = errno {
            self.op_errors.get_or_create(&ErrorLabels { op, errno }).inc();
            if errno == libc::EIO {
                self.io_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn record_read(&self, kind: FileKind, bytes: usize) {
        let labels = KindLabels { kind: kind.as_str() };
        self.reads.get_or_create(&labels).inc();
        self.read_bytes.get_or_create(&labels).inc_by(bytes as u64);
    }

    pub fn record_write(&self, kind: FileKind, bytes: usize) {
        let labels = KindLabels { kind: kind.as_str() };
        self.writes.get_or_create(&labels).inc();
        self.written_bytes.get_or_create(&labels).inc_by(bytes as u64);
    }

    pub fn record_fsync(&self, kind: FileKind) {
        self.fsyncs
            .get_or_create(&KindLabels { kind: kind.as_str() })
            .inc();
    }

    pub fn set_redo_complete_lsn(&self, lsn: u64) {
        self.redo_complete_lsn.set(lsn as i64);
    }

    pub fn record_redo_checkpoint(&self, lsn: u64) {
        self.redo_checkpoint_lsn.set(lsn as i64);
    }

    pub fn record_redo_complete(&self, bytes: usize, mtrs: usize) {
        self.redo_complete_bytes.inc_by(bytes as u64);
        self.redo_mtrs.inc_by(mtrs as u64);
    }

    pub fn record_cache_read(&self, hit: bool) {
        if hit { &self.cache.hits } else { &self.cache.misses }.inc();
    }

    pub fn record_evictions(&self, pages: u64) {
        self.cache.evictions.inc_by(pages);
    }

    pub fn set_cache_resident(&self, bytes: u64, budget: u64) {
        self.cache.resident_bytes.set(bytes as i64);
        self.cache.budget_bytes.set(budget as i64);
    }

    pub fn record_fetch(&self, pages: usize, seconds: f64) {
        self.remote.fetch_duration.observe(seconds);
        self.remote.fetches.fetch_add(1, Ordering::Relaxed);
        self.remote
            .fetch_us
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
        self.remote.fetched_pages.inc_by(pages as u64);
    }

    pub fn record_upload(&self, pages: usize, seconds: f64) {
        self.remote.upload_duration.observe(seconds);
        self.remote.uploaded_pages.inc_by(pages as u64);
    }

    pub fn set_upload_queue(&self, pages: usize, bytes: u64) {
        self.remote.upload_queue_pages.set(pages as i64);
        self.remote.upload_queue_bytes.set(bytes as i64);
    }

    pub fn record_remote_error(&self, service: Service) {
        self.remote.errors.get_or_create(&service.label()).inc();
    }

    pub fn set_wal_shipped_lsn(&self, lsn: u64) {
        self.remote.wal_shipped_lsn.set(lsn as i64);
    }

    pub fn set_wal_durable_lsn(&self, lsn: u64) {
        self.remote.wal_durable_lsn.set(lsn as i64);
    }

    /// Appends `key=value` lines with the I/O counters (for `.fuse-ibd/status`; the keys are a
    /// contract, see docs/SEMANTICS.md).
    pub fn write_status(&self, out: &mut String) {
        let (cache, remote) = (&self.cache, &self.remote);
        let io_errors = self.io_errors.load(Ordering::Relaxed);
        let remote_errors = |s: Service| remote.errors.get_or_create(&s.label()).get();
        let lines = [
            ("cache_hits", cache.hits.get()),
            ("cache_misses", cache.misses.get()),
            ("cache_evictions", cache.evictions.get()),
            ("cache_resident_bytes", cache.resident_bytes.get() as u64),
            ("cache_budget_bytes", cache.budget_bytes.get() as u64),
            ("remote_fetches", remote.fetches.load(Ordering::Relaxed)),
            ("remote_fetched_pages", remote.fetched_pages.get()),
            ("remote_fetch_us_total", remote.fetch_us.load(Ordering::Relaxed)),
            ("pages_uploaded", remote.uploaded_pages.get()),
            ("upload_queue_pages", remote.upload_queue_pages.get() as u64),
            ("upload_queue_bytes", remote.upload_queue_bytes.get() as u64),
            ("wal_shipped_lsn", remote.wal_shipped_lsn.get() as u64),
            ("io_errors", io_errors),
            ("pageserver_errors", remote_errors(Service::Pageserver)),
            ("walsync_errors", remote_errors(Service::Walsync)),
        ];
        for (key, value) in lines {
            let _ = writeln!(out, "{key}={value}");
        }
        let counters = [
            ("reads", &self.reads),
            ("read_bytes", &self.read_bytes),
            ("writes", &self.writes),
            ("written_bytes", &self.written_bytes),
            ("fsyncs", &self.fsyncs),
        ];
        for (name, family) in counters {
            for kind in KINDS {
                let value = family.get_or_create(&KindLabels { kind: kind.as_str() }).get();
                let _ = writeln!(out, "{name}_{}={value}", kind.as_str());
            }
        }
    }
}
