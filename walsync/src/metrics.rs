//! walsync's own metrics (the HTTP request metrics come from `ibd_api::server::RequestMetrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TimelineLabel {
    pub timeline: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SegmentStartLabel {
    /// `zeroed` (a spare was ready) or `empty` (commits to it are slower).
    pub start: &'static str,
}

#[derive(Clone)]
pub struct Metrics {
    /// From an append (or a stream's batch) reaching its timeline to its being durable.
    pub append_latency: Histogram,
    pub fsync_latency: Histogram,
    /// Appends made durable by one fdatasync (group commit).
    pub fsync_batch_appends: Histogram,
    pub appended_bytes: Counter,
    pub appends: Counter,
    pub rejected_appends: Family<ReasonLabel, Counter>,
    pub torn_tails_truncated: Counter,
    /// Corrupt WAL ranges found: at start (invalid bytes with valid WAL after them) or by the
    /// CRC check of a read.
    pub corrupt_wal_found: Counter,
    pub removed_bytes: Counter,
    pub segments_started: Family<SegmentStartLabel, Counter>,
    pub durable_lsn: Family<TimelineLabel, Gauge>,
    /// Durable LSN minus the latest checkpoint LSN: how much redo a recovery would replay.
    pub checkpoint_lag_bytes: Family<TimelineLabel, Gauge>,
    pub stored_bytes: Family<TimelineLabel, Gauge>,
    /// Stored WAL known corrupt (refused to readers), in LSN bytes.
    pub corrupt_wal_bytes: Family<TimelineLabel, Gauge>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let latency = || Histogram::new(exponential_buckets(10e-6, 2.0, 21));
        let metrics = Self {
            append_latency: latency(),
            fsync_latency: latency(),
            fsync_batch_appends: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            appended_bytes: Counter::default(),
            appends: Counter::default(),
            rejected_appends: Family::default(),
            torn_tails_truncated: Counter::default(),
            corrupt_wal_found: Counter::default(),
            removed_bytes: Counter::default(),
            segments_started: Family::default(),
            durable_lsn: Family::default(),
            checkpoint_lag_bytes: Family::default(),
            stored_bytes: Family::default(),
            corrupt_wal_bytes: Family::default(),
        };
        let m = metrics.clone();
        registry.register(
            "append_latency_seconds",
            "Time from an append reaching its timeline to its being durable",
            m.append_latency,
        );
        registry.register(
            "fsync_latency_seconds",
            "Duration of one WAL fdatasync",
            m.fsync_latency,
        );
        registry.register(
            "fsync_batch_appends",
            "Appends made durable by one fdatasync (group commit)",
            m.fsync_batch_appends,
        );
        registry.register("appended_bytes", "WAL bytes appended", m.appended_bytes);
        registry.register("appends", "Appends acknowledged", m.appends);
        registry.register(
            "rejected_appends",
            "Appends refused, by reason",
            m.rejected_appends,
        );
        registry.register(
            "torn_tails_truncated",
            "Torn segment tails cut off at start",
            m.torn_tails_truncated,
        );
        registry.register(
            "corrupt_wal_found",
            "Corrupt WAL ranges found, at start or by a read's CRC check",
            m.corrupt_wal_found,
        );
        registry.register("removed_bytes", "WAL bytes removed by retention", m.removed_bytes);
        registry.register(
            "segments_started",
            "WAL segments started, as a zeroed file or empty",
            m.segments_started,
        );
        registry.register("durable_lsn", "Durable end LSN per timeline", m.durable_lsn);
        registry.register(
            "checkpoint_lag_bytes",
            "Durable LSN minus the latest checkpoint LSN per timeline",
            m.checkpoint_lag_bytes,
        );
        registry.register("stored_bytes", "WAL bytes on disk per timeline", m.stored_bytes);
        registry.register(
            "corrupt_wal_bytes",
            "Stored WAL known corrupt and refused to readers, per timeline",
            m.corrupt_wal_bytes,
        );
        metrics
    }

    pub fn timeline(&self, timeline: &str) -> TimelineLabel {
        TimelineLabel {
            timeline: timeline.to_string(),
        }
    }
}

/// The value of the first sample in Prometheus text `text` whose line starts with `series` (a
/// metric name, with its labels if it has any: `walsync_durable_lsn{timeline="t"}`). For tests
/// and tools reading `/metrics`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn samples_are_found_by_their_full_series_name() {
        let text = "a_total 3\na_total_x 4\nb{t=\"x\"} 5.5\n# EOF\n";
        assert_eq!(super::sample(text, "a_total"), Some(3.0));
        assert_eq!(super::sample(text, "b{t=\"x\"}"), Some(5.5));
        assert_eq!(super::sample(text, "b"), None);
    }
}
