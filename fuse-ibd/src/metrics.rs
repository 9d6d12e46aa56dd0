//! `fuse_ibd_*` metrics: per-operation latency and errors (recorded by the FUSE adapter) and
//! I/O volume by file kind (recorded by the core). The same counters feed `.fuse-ibd/status`.

use std::fmt::Write;
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
}

impl Default for Metrics {
    fn default() -> Self {
        let mut root = Registry::default();
        let kernel_latency = Arc::new(KernelLatencyExport::default());
        root.register_collector(Box::new(kernel_latency.clone()));
        let registry = root.sub_registry_with_prefix("fuse_ibd");
        let op_duration = Family::<OpLabels, Histogram>::new_with_constructor(|| {
            // 1 us .. ~17 s
            Histogram::new(exponential_buckets(1e-6, 2.0, 25))
        });
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

    /// Appends `key=value` lines with the I/O counters (for `.fuse-ibd/status`).
    pub fn write_status(&self, out: &mut String) {
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
