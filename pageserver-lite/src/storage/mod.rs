//! The page store: log-structured, crash-safe, versioned.
//!
//! Data flow: a write goes to the single `writer` thread, which appends CRC-framed `record`s to
//! the active `segment` (each request a batch that recovery takes whole or not at all),
//! `fdatasync`s once for every request it gathered (group commit), then
//! publishes them in the in-memory `index` and answers. A read looks the page up in the index
//! under a shared lock and `pread`s the image from its segment outside it, checking the CRC-32C
//! the writer sent. At start, `recovery` loads the newest `snapshot` of the index, replays only
//! the segments after it, and verifies the ones before it in the background. `compaction` drops
//! versions nobody needs and rewrites mostly-dead segments.

mod compaction;
mod index;
mod record;
mod recovery;
mod segment;
mod snapshot;
mod writer;

#[cfg(test)]
mod tests;

use std::fs::File;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use ibd_api::pageserver::{
    zero_page, AcquireTermRequest, CheckpointMarker, CreateFileRequest, CreateTimelineRequest, FileInfo,
    Page, PageAddr, PageUpload, PageVersionInfo, PutPagesResponse, ReadAt, RecordMarkerRequest, TermInfo,
    TimelineInfo, UpdateFileRequest,
};
use prometheus_client::registry::Registry;
use tokio::sync::oneshot;

use self::index::{Location, MetaChange, MetaEntry, MetaIndex, PageIndex, PageKey, PageVersion};
use self::record::{MetaKey, MetaRecord, PAGE_IMAGE_OFFSET};
use self::segment::Segments;
use self::writer::{ControlOp, ControlOutcome, WriteOp};
use crate::metrics::StoreMetrics;
use crate::namespace::{file_info, FileVersion};
use crate::timeline::{Ancestry, BelowHorizon, GcHorizon, Timelines};

pub use self::compaction::MaintenanceReport;

/// What the store is told at start.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    /// A segment is sealed and a new one started once it reaches this size.
    pub segment_size: u64,
    /// Versions superseded longer ago than this are dropped (unless a branch needs them).
    pub retention: Duration,
    /// Sealed segments with less than this fraction of live bytes are rewritten.
    pub compaction_threshold: f64,
    /// How often GC and compaction run in the background (None: only on request).
    pub maintenance_interval: Option<Duration>,
    /// How often the index snapshot is rewritten when something changed (None: at shutdown only).
    pub snapshot_interval: Option<Duration>,
    /// Called after every sync of appended records (tests: ordering checks and fault injection).
    pub sync_hook: Option<Arc<dyn SyncHook>>,
}

/// Sees every sync that makes appended records durable: called after `fdatasync` returned and
/// before anything it covers is published or acknowledged. Tests hold a sync open through it (no
/// write may be acknowledged meanwhile) or fail it (the store must then refuse writes).
pub trait SyncHook: Send + Sync + std::fmt::Debug {
    /// The first `durable_len` bytes of `segment` are on disk. An error fails the sync.
    fn synced(&self, segment: u64, durable_len: u64) -> std::io::Result<()>;
}

impl StoreConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            segment_size: 64 << 20,
            retention: Duration::from_secs(24 * 3600),
            compaction_threshold: 0.5,
            maintenance_interval: Some(Duration::from_secs(10)),
            snapshot_interval: Some(Duration::from_secs(60)),
            sync_hook: None,
        }
    }

    fn segment_dir(&self) -> PathBuf {
        self.data_dir.join("segments")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("timeline {0:?} not found")]
    TimelineNotFound(String),
    #[error("timeline {0:?} already exists with another definition")]
    TimelineExists(String),
    #[error("{0} not found")]
    FileNotFound(String),
    #[error(
        "path {path:?} is taken by live file {file} of timeline {timeline:?}: unlink it first, or \
         rename onto it with \"replace\": true"
    )]
    PathExists {
        timeline: String,
        path: String,
        file: u64,
    },
    #[error("stale term {given}: the timeline's term is {current}; another writer took over")]
    StaleTerm { given: u64, current: u64 },
    #[error("unknown term {given}: the timeline's term is {current}; acquire a term first")]
    UnknownTerm { given: u64, current: u64 },
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    CrcMismatch(String),
    #[error("no checkpoint marker of timeline {timeline:?} has log_end_lsn_at_write <= {lsn}")]
    NoMarker { timeline: String, lsn: u64 },
    #[error(
        "{}: GC has dropped page versions that {} on timeline {:?} needs (its GC horizon: seq {}, \
         lsn {}); use a later point or the latest state",
        .what, .below.at, .below.timeline, .below.horizon.seq, .below.horizon.lsn
    )]
    BelowGcHorizon { what: String, below: BelowHorizon },
    #[error("{0}")]
    Corrupt(String),
    #[error("{0}")]
    TimelineDamaged(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the store does not accept writes: {0}")]
    Unavailable(String),
}

impl StoreError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
        let context = context.into();
        move |source| StoreError::Io { context, source }
    }
}

/// Everything the index and namespace know; the writer thread is its only mutator.
#[derive(Debug)]
pub(crate) struct State {
    pub timelines: Timelines,
    pub index: PageIndex,
    pub meta: MetaIndex,
    pub segments: Segments,
    pub next_file_id: u64,
}

impl State {
    /// Publishes a page version (live write, replay, snapshot load alike).
    pub fn apply_page(&mut self, key: PageKey, version: PageVersion) {
        if let Some(old) = self.index.insert(key, version) {
            self.account(old.location, false);
        }
        self.account(version.location, true);
        if let Some(tl) = self.timelines.get_mut(key.timeline) {
            tl.last_seq = tl.last_seq.max(version.seq);
        }
    }

    /// Moves a version compaction copied; false if it is no longer live there.
    pub fn relocate(&mut self, key: &PageKey, seq: u64, from: Location, to: Location) -> bool {
        let moved = self.index.relocate(key, seq, from, to);
        if moved {
            self.account(from, false);
            self.account(to, true);
        }
        moved
    }

    pub fn account(&mut self, at: Location, live: bool) {
        if let Some(segment) = self.segments.get_mut(at.segment) {
            if live {
                segment.live_bytes += u64::from(at.len);
            } else {
                segment.live_bytes = segment.live_bytes.saturating_sub(u64::from(at.len));
            }
        }
    }

    /// Counts the metadata record of `key` at `at` as live unless a record of higher `rank` is
    /// (and the one it supersedes as dead).
    pub fn track_meta(&mut self, key: MetaKey, rank: (u64, u64), at: Location) {
        let entry = MetaEntry { rank, location: at };
        if let MetaChange::Live { superseded } = self.meta.insert(key, entry) {
            if let Some(old) = superseded {
                self.account(old, false);
            }
            self.account(at, true);
        }
    }

    /// Moves a metadata record compaction copied; false if it is no longer live there.
    pub fn relocate_meta(&mut self, key: &MetaKey, from: Location, to: Location) -> bool {
        let moved = self.meta.relocate(key, from, to);
        if moved {
            self.account(from, false);
            self.account(to, true);
        }
        moved
    }

    /// Applies a metadata record found at `at`. Order-independent and idempotent, so replay can
    /// apply records in any order and twice (see `recovery`); a timeline must exist before its
    /// other records. The record counts as live bytes, even if its timeline is unknown (its
    /// creation record was lost to damage: nothing of it is thrown away), unless superseded.
    pub fn apply_meta(&mut self, record: &MetaRecord, at: Location) {
        self.track_meta(record.key(), record.rank(), at);
        match record {
            MetaRecord::TimelineCreated {
                num,
                id,
                parent,
                branch_seq,
                branch_lsn,
            } => {
                if self.timelines.get(*num).is_none() {
                    self.timelines.insert(crate::timeline::Timeline {
                        num: *num,
                        id: id.clone(),
                        parent: *parent,
                        branch_seq: *branch_seq,
                        branch_lsn: *branch_lsn,
                        term: 0,
                        last_seq: *branch_seq,
                        markers: Vec::new(),
                        namespace: Default::default(),
                        gc_horizon: Default::default(),
                        paths: Default::default(),
                    });
                    self.timelines.rebuild_paths(*num);
                }
            }
            MetaRecord::TermAcquired { timeline, term } => {
                if let Some(tl) = self.timelines.get_mut(*timeline) {
                    tl.term = tl.term.max(*term);
                }
            }
            MetaRecord::FileVersion {
                timeline,
                file,
                version,
            } => self.apply_file_version(*timeline, *file, version.clone()),
            MetaRecord::RenameReplace {
                timeline,
                file,
                version,
                replaced,
            } => {
                let unlink = FileVersion {
                    state: None,
                    truncated_to: None,
                    ..version.clone()
                };
                self.apply_file_version(*timeline, *replaced, unlink);
                self.apply_file_version(*timeline, *file, version.clone());
            }
            MetaRecord::GcHorizon { timeline, seq, lsn } => {
                if let Some(tl) = self.timelines.get_mut(*timeline) {
                    tl.gc_horizon = tl.gc_horizon.max(GcHorizon { seq: *seq, lsn: *lsn });
                }
            }
            MetaRecord::Marker { timeline, marker } => {
                if let Some(tl) = self.timelines.get_mut(*timeline) {
                    if !tl.markers.contains(marker) {
                        tl.markers.push(*marker);
                        tl.markers.sort_by_key(|m| (m.checkpoint_lsn, m.page_store_seq));
                    }
                }
            }
        }
    }

    fn apply_file_version(&mut self, timeline: u32, file: u64, version: FileVersion) {
        self.next_file_id = self.next_file_id.max(file + 1);
        if let Some(tl) = self.timelines.get_mut(timeline) {
            tl.last_seq = tl.last_seq.max(version.seq);
            tl.namespace.apply(file, version);
            self.timelines.update_path(timeline, file);
        }
    }

    pub fn publish_gauges(&self, metrics: &StoreMetrics) {
        metrics.versions.set(self.index.len() as i64);
        metrics.segments.set(self.segments.len() as i64);
        metrics.disk_bytes.set(self.segments.total_bytes() as i64);
    }

    /// The timeline to read or write: it and all its ancestors must be known.
    fn timeline_num(&self, id: &str) -> Result<u32, StoreError> {
        let num = self
            .timelines
            .num_of(id)
            .ok_or_else(|| StoreError::TimelineNotFound(id.to_string()))?;
        if !self.timelines.has_ancestry(num) {
            return Err(StoreError::TimelineDamaged(format!(
                "timeline {id:?} cannot be served: the record that created one of its ancestors \
                 was lost to damage (see pageserver_corrupt_records and the start-up log)"
            )));
        }
        Ok(num)
    }

    /// Which file and block an address means, through `ancestry`.
    fn resolve(&self, ancestry: &Ancestry, addr: PageAddr) -> Result<(u64, u64), StoreError> {
        match addr {
            PageAddr::File { file, block } => {
                self.timelines
                    .file_at(ancestry, file)
                    .ok_or_else(|| StoreError::FileNotFound(format!("file {file}")))?;
                Ok((file, block))
            }
            PageAddr::Space { space, page } => self
                .timelines
                .file_of_space(ancestry, space)
                .map(|file| (file, u64::from(page)))
                .ok_or_else(|| StoreError::FileNotFound(format!("page file of space {space}"))),
        }
    }

    /// The version a read returns, if any, and the segment holding it (None if that segment is
    /// gone, which only damage can cause: the read then fails rather than return zeros).
    fn locate(&self, ancestry: &Ancestry, file: u64, block: u64) -> Option<(PageVersion, Option<Arc<File>>)> {
        let found = ancestry.steps.iter().find_map(|&(timeline, max_seq)| {
            let key = PageKey {
                timeline,
                file,
                block,
            };
            self.index.find(&key, max_seq, ancestry.max_lsn)
        })?;
        if self.timelines.truncated_since(ancestry, file, block, found.seq) {
            return None;
        }
        let segment = self.segments.get(found.location.segment).map(|s| s.file.clone());
        Some((*found, segment))
    }
}

/// The page store. Cheap to clone; all clones share one writer. Call [`Store::shutdown`] to stop
/// cleanly; dropping every clone without it is like a crash (the next open replays the log).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    state: Arc<RwLock<State>>,
    tx: mpsc::Sender<WriteOp>,
    writer: Mutex<Option<JoinHandle<()>>>,
    metrics: StoreMetrics,
    /// Held for the life of the store: an exclusive `flock` on `<data-dir>/LOCK`.
    _lock: File,
}

impl Store {
    /// Opens (or creates) the store in `config.data_dir`: recovers it and starts the writer.
    pub fn open(config: StoreConfig, registry: &mut Registry) -> Result<Self, StoreError> {
        let metrics = StoreMetrics::register(registry);
        let lock = recovery::lock_data_dir(&config.data_dir)?;
        let recovered = recovery::recover(&config, &metrics)?;
        if !recovered.unverified.is_empty() {
            let (dir, metrics) = (config.segment_dir(), metrics.clone());
            std::thread::Builder::new()
                .name("pageserver-scrub".into())
                .spawn(move || recovery::scrub(&dir, &recovered.unverified, &metrics))
                .map_err(StoreError::io("cannot start the scrub thread"))?;
        }
        let state = Arc::new(RwLock::new(recovered.state));
        let (tx, rx) = mpsc::channel();
        let writer = writer::Writer::new(state.clone(), metrics.clone(), config, recovered.active);
        let handle = std::thread::Builder::new()
            .name("pageserver-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(StoreError::io("cannot start the writer thread"))?;
        Ok(Self {
            inner: Arc::new(Inner {
                state,
                tx,
                writer: Mutex::new(Some(handle)),
                metrics,
                _lock: lock,
            }),
        })
    }

    /// Finishes pending writes, writes an index snapshot and stops the writer.
    pub async fn shutdown(&self) {
        let (reply, done) = oneshot::channel();
        if self.inner.tx.send(WriteOp::Shutdown { reply }).is_ok() {
            let _ = done.await;
        }
        let handle = self.inner.writer.lock().expect("writer handle lock").take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }

    pub fn metrics(&self) -> &StoreMetrics {
        &self.inner.metrics
    }

    fn state(&self) -> RwLockReadGuard<'_, State> {
        // A panic while holding the lock is a bug; the data it guards is still consistent enough
        // to read (the writer publishes whole batches), so keep serving.
        self.inner.state.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn timelines(&self) -> Vec<TimelineInfo> {
        let state = self.state();
        state.timelines.iter().map(|t| state.timelines.info(t)).collect()
    }

    pub fn timeline(&self, id: &str) -> Result<TimelineInfo, StoreError> {
        let state = self.state();
        let tl = state
            .timelines
            .by_id(id)
            .ok_or_else(|| StoreError::TimelineNotFound(id.to_string()))?;
        Ok(state.timelines.info(tl))
    }

    pub fn markers(&self, id: &str) -> Result<Vec<CheckpointMarker>, StoreError> {
        let state = self.state();
        let tl = state
            .timelines
            .by_id(id)
            .ok_or_else(|| StoreError::TimelineNotFound(id.to_string()))?;
        Ok(tl.markers.clone())
    }

    pub fn files(&self, timeline: &str, at: ReadAt) -> Result<Vec<FileInfo>, StoreError> {
        let state = self.state();
        let ancestry = state.timelines.ancestry(state.timeline_num(timeline)?, at);
        Ok(state.timelines.list_files(&ancestry))
    }

    pub fn file(&self, timeline: &str, file: u64, at: ReadAt) -> Result<FileInfo, StoreError> {
        let state = self.state();
        let ancestry = state.timelines.ancestry(state.timeline_num(timeline)?, at);
        let (seq, s) = state
            .timelines
            .file_at(&ancestry, file)
            .ok_or_else(|| StoreError::FileNotFound(format!("file {file}")))?;
        Ok(file_info(file, seq, s))
    }

    /// `GetPage`. A block never written (or cut off by a truncation since) reads as zeros.
    pub fn read_page(&self, timeline: &str, addr: PageAddr, at: ReadAt) -> Result<Page, StoreError> {
        Ok(self.read_pages(timeline, &[addr], at)?.remove(0))
    }

    /// Batched `GetPage`: all pages are located under one lock acquisition, then read.
    pub fn read_pages(
        &self,
        timeline: &str,
        addrs: &[PageAddr],
        at: ReadAt,
    ) -> Result<Vec<Page>, StoreError> {
        let located = {
            let state = self.state();
            let ancestry = state.timelines.ancestry(state.timeline_num(timeline)?, at);
            state
                .timelines
                .check_gc_horizon(&ancestry)
                .map_err(|below| StoreError::BelowGcHorizon {
                    what: format!("cannot read timeline {timeline:?}"),
                    below,
                })?;
            addrs
                .iter()
                .map(|&addr| {
                    let (file, block) = state.resolve(&ancestry, addr)?;
                    Ok((addr, state.locate(&ancestry, file, block)))
                })
                .collect::<Result<Vec<_>, StoreError>>()?
        };
        located
            .into_iter()
            .map(|(addr, found)| match found {
                None => Ok(zero_page()),
                Some((version, segment)) => self.read_version(timeline, addr, &version, segment.as_deref()),
            })
            .collect()
    }

    fn read_version(
        &self,
        timeline: &str,
        addr: PageAddr,
        version: &PageVersion,
        segment: Option<&File>,
    ) -> Result<Page, StoreError> {
        let corrupt = |why: String| {
            self.inner.metrics.corrupt_page_reads.inc();
            tracing::error!(
                timeline,
                ?addr,
                seq = version.seq,
                "refusing to serve a damaged page: {why}"
            );
            StoreError::Corrupt(format!(
                "page {addr:?} of timeline {timeline:?} (seq {}) is damaged on disk: {why}",
                version.seq
            ))
        };
        if version.damaged {
            return Err(corrupt("its record failed the CRC-32C check at start".into()));
        }
        let Some(segment) = segment else {
            return Err(corrupt(format!(
                "segment {} is missing",
                version.location.segment
            )));
        };
        let image = segment::read_exact_at(
            segment,
            version.location.offset + PAGE_IMAGE_OFFSET,
            version.image_len as usize,
        )
        .map_err(StoreError::io(format!(
            "cannot read segment {}",
            version.location.segment
        )))?;
        let actual = ibd_api::crc32c(&image);
        if actual != version.crc32c {
            return Err(corrupt(format!(
                "CRC-32C {actual:#010x}, written {:#010x}",
                version.crc32c
            )));
        }
        self.inner.metrics.pages_read.inc();
        self.inner.metrics.page_bytes_read.inc_by(image.len() as u64);
        Ok(Page {
            found: true,
            seq: version.seq,
            lsn: version.lsn,
            crc32c: version.crc32c,
            image: Bytes::from(image),
        })
    }

    /// `GetPageVersions`: versions with `from_lsn <= lsn <= to_lsn` visible on `timeline` (its own,
    /// then its ancestors' up to the branch points), oldest first.
    pub fn page_versions(
        &self,
        timeline: &str,
        addr: PageAddr,
        from_lsn: u64,
        to_lsn: u64,
    ) -> Result<Vec<PageVersionInfo>, StoreError> {
        let state = self.state();
        let ancestry = state
            .timelines
            .ancestry(state.timeline_num(timeline)?, ReadAt::Latest);
        let (file, block) = state.resolve(&ancestry, addr)?;
        let mut out: Vec<PageVersionInfo> = ancestry
            .steps
            .iter()
            .flat_map(|&(num, max_seq)| {
                let name = &state.timelines.get(num).expect("ancestor exists").id;
                let key = PageKey {
                    timeline: num,
                    file,
                    block,
                };
                state
                    .index
                    .versions(&key)
                    .iter()
                    .filter(move |v| v.seq <= max_seq && v.lsn >= from_lsn && v.lsn <= to_lsn)
                    .map(move |v| PageVersionInfo {
                        timeline: name.clone(),
                        seq: v.seq,
                        lsn: v.lsn,
                        crc32c: v.crc32c,
                        len: v.image_len,
                        written_at_ms: v.written_at_ms,
                    })
            })
            .collect();
        out.sort_by_key(|v| v.seq);
        Ok(out)
    }

    /// Uploads a batch: all pages become durable together, or none (any invalid page refuses the
    /// whole batch). CRC-32Cs are checked here, on the caller's thread, before the writer sees it.
    pub async fn put_pages(
        &self,
        timeline: &str,
        term: u64,
        pages: Vec<PageUpload>,
    ) -> Result<PutPagesResponse, StoreError> {
        for p in &pages {
            let actual = ibd_api::crc32c(&p.image);
            if actual != p.crc32c {
                self.inner.metrics.crc_mismatch_uploads.inc();
                return Err(StoreError::CrcMismatch(format!(
                    "file {} block {}: image CRC-32C is {actual:#010x}, the upload says {:#010x}; nothing was stored",
                    p.file, p.block, p.crc32c
                )));
            }
        }
        let (reply, answer) = oneshot::channel();
        self.submit(WriteOp::PutPages {
            timeline: timeline.to_string(),
            term,
            pages,
            reply,
        })?;
        answer.await.unwrap_or_else(|_| Err(writer_gone()))
    }

    pub async fn create_timeline(&self, req: CreateTimelineRequest) -> Result<TimelineInfo, StoreError> {
        match self.control(ControlOp::CreateTimeline(req)).await? {
            ControlOutcome::Timeline(info) => Ok(info),
            other => unreachable!("create_timeline answered {other:?}"),
        }
    }

    pub async fn acquire_term(
        &self,
        timeline: &str,
        req: AcquireTermRequest,
    ) -> Result<TermInfo, StoreError> {
        match self.control(ControlOp::AcquireTerm(timeline.into(), req)).await? {
            ControlOutcome::Term(info) => Ok(info),
            other => unreachable!("acquire_term answered {other:?}"),
        }
    }

    pub async fn create_file(&self, timeline: &str, req: CreateFileRequest) -> Result<FileInfo, StoreError> {
        match self.control(ControlOp::CreateFile(timeline.into(), req)).await? {
            ControlOutcome::File(info) => Ok(info),
            other => unreachable!("create_file answered {other:?}"),
        }
    }

    pub async fn update_file(
        &self,
        timeline: &str,
        file: u64,
        req: UpdateFileRequest,
    ) -> Result<FileInfo, StoreError> {
        match self
            .control(ControlOp::UpdateFile(timeline.into(), file, req))
            .await?
        {
            ControlOutcome::File(info) => Ok(info),
            other => unreachable!("update_file answered {other:?}"),
        }
    }

    /// Unlinks a file; returns the seq of the change.
    pub async fn unlink_file(&self, timeline: &str, file: u64, term: u64) -> Result<u64, StoreError> {
        match self
            .control(ControlOp::UnlinkFile(timeline.into(), file, term))
            .await?
        {
            ControlOutcome::Unlinked(seq) => Ok(seq),
            other => unreachable!("unlink_file answered {other:?}"),
        }
    }

    pub async fn record_marker(
        &self,
        timeline: &str,
        req: RecordMarkerRequest,
    ) -> Result<CheckpointMarker, StoreError> {
        match self
            .control(ControlOp::RecordMarker(timeline.into(), req))
            .await?
        {
            ControlOutcome::Marker(marker) => Ok(marker),
            other => unreachable!("record_marker answered {other:?}"),
        }
    }

    /// Runs GC and compaction now (they also run every `maintenance_interval`).
    pub async fn maintain(&self) -> Result<MaintenanceReport, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.submit(WriteOp::Maintain { reply })?;
        answer.await.unwrap_or_else(|_| Err(writer_gone()))
    }

    async fn control(&self, op: ControlOp) -> Result<ControlOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.submit(WriteOp::Control { op, reply })?;
        answer.await.unwrap_or_else(|_| Err(writer_gone()))
    }

    fn submit(&self, op: WriteOp) -> Result<(), StoreError> {
        self.inner.tx.send(op).map_err(|_| writer_gone())
    }
}

fn writer_gone() -> StoreError {
    StoreError::Unavailable("the writer has stopped (shutting down or failed)".into())
}
