//! `fuse_ibd_kernel_latency_seconds{source, op}` histograms for a prometheus-client registry.

use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;
use tracing::warn;

use crate::histogram::{LatencySnapshot, OpHistogram};
use crate::KernelLatency;

/// Full metric name; the collector adds the `_seconds` unit suffix itself.
pub const METRIC_NAME: &str = "fuse_ibd_kernel_latency_seconds";
const METRIC_BASE_NAME: &str = "fuse_ibd_kernel_latency";

/// Powers of two of nanoseconds, 2^10 ns (~1 µs) to 2^35 ns (~34 s): every log2 slot of the
/// BPF histogram falls entirely below one bound, so the buckets are exact, not interpolated.
/// Fixed, so every scrape has the same series even when a bucket is empty.
const FIRST_BOUND_LOG2_NS: usize = 10;
const LAST_BOUND_LOG2_NS: usize = 35;
pub const BUCKET_BOUNDS_SECONDS: [f64; LAST_BOUND_LOG2_NS - FIRST_BOUND_LOG2_NS + 1] = {
    let mut bounds = [0.0; LAST_BOUND_LOG2_NS - FIRST_BOUND_LOG2_NS + 1];
    let mut i = 0;
    while i < bounds.len() {
        bounds[i] = (1u64 << (FIRST_BOUND_LOG2_NS + i)) as f64 / 1e9;
        i += 1;
    }
    bounds
};

/// Non-cumulative `(upper bound, count)` pairs ending with `+Inf`, as prometheus-client wants.
fn buckets(histogram: &OpHistogram) -> Vec<(f64, u64)> {
    let mut buckets: Vec<(f64, u64)> = BUCKET_BOUNDS_SECONDS.iter().map(|&le| (le, 0)).collect();
    buckets.push((f64::INFINITY, 0));
    for (slot, &count) in histogram.slots.iter().enumerate() {
        // Slot s holds values below 2^(s+1) ns, the bound with log2 = s + 1.
        let index = (slot + 1)
            .saturating_sub(FIRST_BOUND_LOG2_NS)
            .min(buckets.len() - 1);
        buckets[index].1 += count;
    }
    buckets
}

fn encode_snapshot(
    snapshot: &LatencySnapshot,
    mut encoder: DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        METRIC_BASE_NAME,
        "Kernel-side I/O latency: FUSE requests of this mount (queueing + daemon), and the file syscalls and io_uring requests of mariadbd",
        Some(&Unit::Seconds),
        MetricType::Histogram,
    )?;
    for (id, histogram) in &snapshot.ops {
        let labels = [("source", id.source.as_str().to_owned()), ("op", id.name())];
        let buckets = buckets(histogram);
        // _count must equal the +Inf bucket; a concurrent update between reading `count` and
        // `slots` could make them differ by one.
        let count = buckets.iter().map(|(_, n)| n).sum();
        family.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
            histogram.sum_ns as f64 / 1e9,
            count,
            &buckets,
            None,
        )?;
    }
    Ok(())
}

/// Register with `registry.register_collector(Box::new(collector))` on a registry without
/// prefix (the name already starts with `fuse_ibd_`). Each scrape follows the pid file and
/// reads the maps; the probes stay shared so the daemon can keep using them.
#[derive(Debug, Clone)]
pub struct KernelLatencyCollector {
    probes: Arc<Mutex<KernelLatency>>,
}

impl KernelLatencyCollector {
    pub fn new(probes: Arc<Mutex<KernelLatency>>) -> Self {
        Self { probes }
    }
}

impl Collector for KernelLatencyCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut probes = self
            .probes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Err(error) = probes.follow_pid() {
            warn!(%error, "cannot update the traced mariadbd pid");
        }
        match probes.snapshot() {
            Ok(snapshot) => encode_snapshot(&snapshot, encoder),
            Err(error) => {
                // Failing the whole scrape would also hide the daemon's own metrics.
                warn!(%error, "cannot read kernel latency maps");
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::histogram::{OpId, Source};

    #[derive(Debug)]
    struct FixedSnapshot(LatencySnapshot);

    impl Collector for FixedSnapshot {
        fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            encode_snapshot(&self.0, encoder)
        }
    }

    fn render(snapshot: LatencySnapshot) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(FixedSnapshot(snapshot)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn histogram_exposition_uses_fixed_exact_buckets() {
        let mut read = OpHistogram::default();
        read.slots[3] = 2; // 8..16 ns -> first bucket (1.024 µs)
        read.slots[14] = 5; // 16..32 µs -> le = 2^15 ns
        read.slots[40] = 1; // ~18 min -> +Inf
        read.count = 8;
        read.sum_ns = 3_000_000_000;
        let snapshot = LatencySnapshot {
            ops: [(
                OpId {
                    source: Source::Fuse,
                    op: 15,
                },
                read,
            )]
            .into(),
        };
        let text = render(snapshot);

        let line = |suffix: &str| {
            let prefix = format!("{METRIC_NAME}_{suffix}");
            text.lines()
                .find(|l| l.starts_with(&prefix))
                .unwrap_or_else(|| panic!("{prefix} in {text}"))
                .to_owned()
        };
        assert!(
            text.contains(&format!("# TYPE {METRIC_NAME} histogram")),
            "{text}"
        );
        assert!(line("sum").ends_with(" 3.0"), "{text}");
        assert!(line("count").ends_with(" 8"), "{text}");
        assert!(
            line(r#"bucket{le="0.000001024",source="fuse",op="read"}"#).ends_with(" 2"),
            "{text}"
        );
        assert!(
            line(r#"bucket{le="0.000032768",source="fuse",op="read"}"#).ends_with(" 7"),
            "{text}"
        );
        assert!(
            line(r#"bucket{le="+Inf",source="fuse",op="read"}"#).ends_with(" 8"),
            "{text}"
        );
        let bucket_lines = text.lines().filter(|l| l.contains("_bucket{")).count();
        assert_eq!(bucket_lines, BUCKET_BOUNDS_SECONDS.len() + 1);
    }
}
