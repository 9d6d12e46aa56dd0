//! Storage metrics, exported as `pageserver_*` (request latency by endpoint is registered by
//! `ibd_api::server::RequestMetrics`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone)]
pub struct StoreMetrics {
    pub pages_written: Counter,
    pub page_bytes_written: Counter,
    pub pages_read: Counter,
    pub page_bytes_read: Counter,
    pub versions: Gauge,
    pub segments: Gauge,
    pub disk_bytes: Gauge,
    pub fsync_seconds: Histogram,
    pub group_commit_requests: Histogram,
    pub compactions: Counter,
    pub compaction_bytes_copied: Counter,
    pub gc_versions_dropped: Counter,
    pub snapshots: Counter,
    pub corrupt_records: Counter,
    pub torn_tails: Counter,
    pub corrupt_page_reads: Counter,
    pub innodb_checksum_failures: Counter,
    pub crc_mismatch_uploads: Counter,
    pub stale_term_refusals: Counter,
}

impl StoreMetrics {
    /// Registers everything in `registry` (already prefixed `pageserver`).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            pages_written: Counter::default(),
            page_bytes_written: Counter::default(),
            pages_read: Counter::default(),
            page_bytes_read: Counter::default(),
            versions: Gauge::default(),
            segments: Gauge::default(),
            disk_bytes: Gauge::default(),
            // 20 us .. ~2.6 s
            fsync_seconds: Histogram::new(exponential_buckets(20e-6, 2.0, 18)),
            group_commit_requests: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            compactions: Counter::default(),
            compaction_bytes_copied: Counter::default(),
            gc_versions_dropped: Counter::default(),
            snapshots: Counter::default(),
            corrupt_records: Counter::default(),
            torn_tails: Counter::default(),
            corrupt_page_reads: Counter::default(),
            innodb_checksum_failures: Counter::default(),
            crc_mismatch_uploads: Counter::default(),
            stale_term_refusals: Counter::default(),
        };
        let r = registry;
        r.register(
            "pages_written",
            "Page versions made durable",
            m.pages_written.clone(),
        );
        r.register(
            "page_bytes_written",
            "Bytes of page images made durable",
            m.page_bytes_written.clone(),
        );
        r.register("pages_read", "Pages served", m.pages_read.clone());
        r.register(
            "page_bytes_read",
            "Bytes of page images served",
            m.page_bytes_read.clone(),
        );
        r.register(
            "page_versions",
            "Page versions held in the index",
            m.versions.clone(),
        );
        r.register("segments", "Segment files", m.segments.clone());
        r.register("disk_bytes", "Bytes in segment files", m.disk_bytes.clone());
        r.register(
            "fsync_duration_seconds",
            "Time of one group-commit fdatasync",
            m.fsync_seconds.clone(),
        );
        r.register(
            "group_commit_requests",
            "Write requests sharing one fdatasync",
            m.group_commit_requests.clone(),
        );
        r.register(
            "compactions",
            "Segments rewritten by compaction",
            m.compactions.clone(),
        );
        r.register(
            "compaction_bytes_copied",
            "Bytes of live records copied by compaction",
            m.compaction_bytes_copied.clone(),
        );
        r.register(
            "gc_versions_dropped",
            "Page versions dropped by GC (outside retention and branch points)",
            m.gc_versions_dropped.clone(),
        );
        r.register("index_snapshots", "Index snapshots written", m.snapshots.clone());
        r.register(
            "corrupt_records",
            "Damaged records found in segments (never served)",
            m.corrupt_records.clone(),
        );
        r.register(
            "torn_tails",
            "Torn segment tails truncated at start",
            m.torn_tails.clone(),
        );
        r.register(
            "corrupt_page_reads",
            "Reads refused because the stored page failed its CRC-32C",
            m.corrupt_page_reads.clone(),
        );
        r.register(
            "innodb_checksum_failures",
            "Uploaded pages of page files whose InnoDB checksum is invalid (stored anyway)",
            m.innodb_checksum_failures.clone(),
        );
        r.register(
            "crc_mismatch_uploads",
            "Uploads refused because a page did not match its CRC-32C",
            m.crc_mismatch_uploads.clone(),
        );
        r.register(
            "stale_term_refusals",
            "Writes refused because they carried a stale or unknown term",
            m.stale_term_refusals.clone(),
        );
        m
    }
}
