//! Page shipping: the namespace and every block written to page and generic files go to the
//! pageserver; an `fsync` of such a file returns once everything written before it is durable
//! there (DESIGN.md invariant 2).
//!
//! Writes never wait for the network: each dirtied block gets a ticket (a global, increasing
//! number) and joins the queue; a newer write of a block still queued replaces its image and
//! ticket. One background task uploads the queue in ticket order, one batch at a time, so the
//! pageserver's sequence numbers follow the order of the writes. An fsync waits until every ticket
//! issued before it is acknowledged, retrying through an outage for up to the configured limit.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ibd_api::pageserver::{
    error_code, CreateFileRequest, CreateTimelineRequest, FileInfo, FileKind as WireKind, PageAddr,
    PageUpload, PageserverClient, ReadAt, ReadPagesRequest, RecordMarkerRequest, UpdateFileRequest,
};
use ibd_api::{ClientError, RetryPolicy};
use ibd_format::redo::{Checkpoint, Lsn};
use tokio::sync::Notify;

use crate::kind::FileKind;
use crate::metrics::{Metrics, Service};
use crate::wait::wait_for;

/// Largest upload batch (64 pages = 1 MiB).
const BATCH_PAGES: usize = 64;

/// Writes wait (backpressure) while this many bytes are not durable on the pageserver yet, so an
/// outage or a slow pageserver cannot grow the queue without bound.
const QUEUE_LIMIT_BYTES: u64 = 256 << 20;

#[derive(Debug, Clone, thiserror::Error)]
pub enum PageShipError {
    #[error("the pageserver did not make the writes before this fsync durable within {0:?}")]
    Timeout(Duration),
    #[error("page shipping failed: {0}")]
    Failed(String),
    #[error("pageserver namespace: {0}")]
    Namespace(String),
}

struct QueuedBlock {
    file: u64,
    block: u64,
    lsn: u64,
    image: Bytes,
}

#[derive(Default)]
struct UploadQueue {
    last_ticket: u64,
    /// Waiting to be uploaded, in ticket order; `by_block` finds a block's entry to replace it.
    pending: BTreeMap<u64, QueuedBlock>,
    by_block: HashMap<(u64, u64), u64>,
    /// Tickets pending or in flight: everything below the first is durable.
    outstanding: BTreeSet<u64>,
    /// Bytes of the images pending or in flight.
    outstanding_bytes: u64,
    /// Each file's newest ticket: its fsync waits for that one only.
    last_of_file: HashMap<u64, u64>,
    /// Newest pageserver sequence number acknowledged.
    last_seq: u64,
    fatal: Option<String>,
}

impl UploadQueue {
    /// Every ticket up to this one is durable.
    fn durable_ticket(&self) -> u64 {
        self.outstanding
            .first()
            .map_or(self.last_ticket, |first| first - 1)
    }

    /// Queues a block under a new ticket; a still-queued older image of the block is replaced
    /// (its ticket is covered by the new one, whose upload carries newer data).
    fn enqueue(&mut self, block: QueuedBlock) -> u64 {
        self.last_ticket += 1;
        let ticket = self.last_ticket;
        if let Some(old) = self.by_block.insert((block.file, block.block), ticket) {
            self.retire(old);
        }
        self.last_of_file.insert(block.file, ticket);
        self.outstanding_bytes += block.image.len() as u64;
        self.pending.insert(ticket, block);
        self.outstanding.insert(ticket);
        ticket
    }

    /// Drops a ticket whose block is durable or covered by a newer ticket of the same block.
    fn retire(&mut self, ticket: u64) {
        if let Some(block) = self.pending.remove(&ticket) {
            self.outstanding_bytes -= block.image.len() as u64;
        }
        self.outstanding.remove(&ticket);
    }

    /// The batch `(ticket, block)` is durable.
    fn acknowledge(&mut self, batch: &[(u64, QueuedBlock)]) {
        for (ticket, block) in batch {
            self.outstanding.remove(ticket);
            self.outstanding_bytes -= block.image.len() as u64;
        }
    }

    /// A failed batch goes back to the queue, except blocks a newer write replaced meanwhile.
    fn requeue(&mut self, batch: Vec<(u64, QueuedBlock)>) {
        for (ticket, block) in batch {
            match self.by_block.entry((block.file, block.block)) {
                Entry::Vacant(slot) => {
                    slot.insert(ticket);
                    self.pending.insert(ticket, block);
                }
                Entry::Occupied(_) => {
                    self.outstanding.remove(&ticket);
                    self.outstanding_bytes -= block.image.len() as u64;
                }
            }
        }
    }

    /// The newest ticket of file `file` (0 if it never had one).
    fn last_of(&self, file: u64) -> u64 {
        self.last_of_file.get(&file).copied().unwrap_or(0)
    }

    /// The next batch to upload, in ticket order; its tickets stay outstanding until acknowledged.
    fn take_batch(&mut self) -> Vec<(u64, QueuedBlock)> {
        let tickets: Vec<u64> = self.pending.keys().take(BATCH_PAGES).copied().collect();
        tickets
            .into_iter()
            .map(|t| {
                let block = self.pending.remove(&t).expect("listed");
                self.by_block.remove(&(block.file, block.block));
                (t, block)
            })
            .collect()
    }
}

struct Shared {
    queue: Mutex<UploadQueue>,
    changed: Condvar,
    work: Notify,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, UploadQueue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The mount's connection to the pageserver for one timeline.
pub struct PageShipper {
    client: PageserverClient,
    runtime: tokio::runtime::Handle,
    timeline: String,
    term: u64,
    limit: Duration,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    /// The timeline's namespace as this writer knows it: relative path -> file.
    files: Mutex<HashMap<String, FileInfo>>,
}

fn wire_kind(kind: FileKind) -> WireKind {
    match kind {
        FileKind::Page => WireKind::Page,
        FileKind::Redo => WireKind::Redo,
        FileKind::Scratch => WireKind::Scratch,
        FileKind::Generic => WireKind::Generic,
    }
}

fn namespace_error(e: ClientError) -> PageShipError {
    PageShipError::Namespace(e.to_string())
}

impl PageShipper {
    /// Creates the timeline if needed, acquires a new writer term (fencing older writers), loads
    /// the namespace and starts the uploader on `runtime`.
    pub async fn start(
        url: &str,
        timeline: &str,
        limit: Duration,
        runtime: tokio::runtime::Handle,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ClientError> {
        // Start-up fails fast with the client's short retries; later calls retry for `limit`.
        let quick = PageserverClient::new(url)?;
        let req = CreateTimelineRequest {
            id: timeline.to_string(),
            ..Default::default()
        };
        if let Err(e) = quick.create_timeline(&req).await {
            if e.code() != Some("timeline_exists") {
                return Err(e);
            }
        }
        let term = quick.acquire_term(timeline, None).await?.term;
        let files = quick.list_files(timeline, Default::default()).await?;
        let client = PageserverClient::with_retry(url, RetryPolicy::for_duration(limit))?;
        let shared = Arc::new(Shared {
            queue: Mutex::default(),
            changed: Condvar::new(),
            work: Notify::new(),
        });
        let uploader = Uploader {
            client: client.clone(),
            timeline: timeline.to_string(),
            term,
            shared: shared.clone(),
            metrics: metrics.clone(),
        };
        runtime.spawn(uploader.run());
        tracing::info!(%timeline, term, files = files.len(), "shipping pages to the pageserver");
        Ok(Self {
            client,
            runtime,
            timeline: timeline.to_string(),
            term,
            limit,
            shared,
            metrics,
            files: Mutex::new(files.into_iter().map(|f| (f.path.clone(), f)).collect()),
        })
    }

    pub fn term(&self) -> u64 {
        self.term
    }

    fn files(&self) -> MutexGuard<'_, HashMap<String, FileInfo>> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The remote file for `path`, if the timeline has it.
    pub fn file(&self, path: &str) -> Option<FileInfo> {
        self.files().get(path).cloned()
    }

    /// Every file the timeline has (to find files missing locally).
    pub fn all_files(&self) -> Vec<FileInfo> {
        self.files().values().cloned().collect()
    }

    /// Registers a new file of the namespace and returns its id.
    pub fn create(&self, path: &str, kind: FileKind, size: u64) -> Result<u64, PageShipError> {
        let req = CreateFileRequest {
            term: self.term,
            path: path.to_string(),
            kind: wire_kind(kind),
            size,
            space_id: None,
        };
        let info = match self
            .runtime
            .block_on(self.client.create_file(&self.timeline, &req))
        {
            Ok(info) => info,
            // A retry after a lost answer finds the file the first attempt created.
            Err(e) if e.code() == Some(error_code::PATH_EXISTS) => self
                .runtime
                .block_on(self.client.list_files(&self.timeline, ReadAt::Latest))
                .map_err(namespace_error)?
                .into_iter()
                .find(|f| f.path == path)
                .ok_or_else(|| namespace_error(e))?,
            Err(e) => return Err(namespace_error(e)),
        };
        let id = info.id;
        self.files().insert(path.to_string(), info);
        Ok(id)
    }

    fn update(&self, path: &str, req: UpdateFileRequest) -> Result<(), PageShipError> {
        let Some(id) = self.file(path).map(|f| f.id) else {
            return Ok(());
        };
        let info = self
            .runtime
            .block_on(self.client.update_file(&self.timeline, id, &req))
            .map_err(namespace_error)?;
        self.files().insert(info.path.clone(), info);
        Ok(())
    }

    /// Renames a file, or every file under a renamed directory, replacing a file already at the
    /// new name in the same durable change (POSIX rename). Returns the ids of replaced files.
    pub fn rename(&self, from: &str, to: &str) -> Result<Vec<u64>, PageShipError> {
        let prefix = format!("{from}/");
        let moved: Vec<String> = self
            .files()
            .keys()
            .filter(|p| *p == from || p.starts_with(&prefix))
            .cloned()
            .collect();
        let mut replaced = Vec::new();
        if moved.is_empty() {
            // An unshipped file (a scratch file, say) now has the name: the shipped one is gone.
            if let Some(target) = self.file(to) {
                self.unlink(to)?;
                replaced.push(target.id);
            }
        }
        for old in moved {
            let new = format!("{to}{}", &old[from.len()..]);
            let (Some(id), target) = (self.file(&old).map(|f| f.id), self.file(&new)) else {
                continue;
            };
            if let Some(target) = &target {
                // Uploads still queued for the replaced file would find it gone.
                self.wait_durable(self.current_ticket())?;
                replaced.push(target.id);
            }
            let info = self
                .runtime
                .block_on(self.client.rename_file(&self.timeline, id, self.term, &new, true))
                .map_err(namespace_error)?;
            let mut files = self.files();
            files.remove(&old);
            files.insert(new, info);
        }
        Ok(replaced)
    }

    /// Unlinks a file; its queued uploads are made durable first, so none arrives for a file the
    /// pageserver no longer has.
    pub fn unlink(&self, path: &str) -> Result<(), PageShipError> {
        let Some(id) = self.file(path).map(|f| f.id) else {
            return Ok(());
        };
        self.wait_durable(self.current_ticket())?;
        self.runtime
            .block_on(self.client.unlink_file(&self.timeline, id, self.term))
            .map_err(namespace_error)?;
        self.files().remove(path);
        Ok(())
    }

    /// The file with id `id`, if the timeline has it.
    pub fn path_of(&self, id: u64) -> Option<FileInfo> {
        self.files().values().find(|f| f.id == id).cloned()
    }

    /// Tells the pageserver a file's size (after truncate, extension, or at fsync) if it changed.
    pub fn set_size(&self, id: u64, size: u64) -> Result<(), PageShipError> {
        let Some(file) = self.path_of(id).filter(|f| f.size != size) else {
            return Ok(());
        };
        self.update(
            &file.path,
            UpdateFileRequest {
                term: self.term,
                size: Some(size),
                ..Default::default()
            },
        )
    }

    /// Records the InnoDB space id of a page file once it is known (page 0 written).
    pub fn set_space_id(&self, id: u64, space_id: u32) -> Result<(), PageShipError> {
        let Some(file) = self.path_of(id).filter(|f| f.space_id.is_none()) else {
            return Ok(());
        };
        self.update(
            &file.path,
            UpdateFileRequest {
                term: self.term,
                space_id: Some(space_id),
                ..Default::default()
            },
        )
    }

    /// The newest durable images of `blocks` of file `id` (zeros for never-written blocks). The
    /// client checks every image's CRC-32C (invariant 5); retries run for the remote limit.
    pub fn fetch(&self, id: u64, blocks: &[u64]) -> Result<Vec<Bytes>, PageShipError> {
        let mut images = Vec::with_capacity(blocks.len());
        for chunk in blocks.chunks(BATCH_PAGES) {
            let req = ReadPagesRequest {
                at: ReadAt::Latest,
                pages: chunk
                    .iter()
                    .map(|&block| PageAddr::File { file: id, block })
                    .collect(),
            };
            let started = Instant::now();
            let pages = self
                .runtime
                .block_on(self.client.read_pages(&self.timeline, &req))
                .map_err(|e| {
                    self.metrics.record_remote_error(Service::Pageserver);
                    PageShipError::Failed(e.to_string())
                })?;
            self.metrics
                .record_fetch(chunk.len(), started.elapsed().as_secs_f64());
            images.extend(pages.into_iter().map(|p| p.image));
        }
        Ok(images)
    }

    /// Queues a block image (the whole block as it is now) and returns its ticket. Does not wait
    /// for the network unless the queue is over its limit: then it waits for uploads to drain it
    /// (up to the remote limit; past that the write is queued anyway and fsyncs report the outage).
    pub fn dirty(&self, file: u64, block: u64, lsn: u64, image: Bytes) -> u64 {
        let drained = wait_for(self.shared.queue(), &self.shared.changed, self.limit, |q| {
            (q.outstanding_bytes < QUEUE_LIMIT_BYTES || q.fatal.is_some()).then_some(())
        });
        drop(drained);
        let mut q = self.shared.queue();
        let ticket = q.enqueue(QueuedBlock {
            file,
            block,
            lsn,
            image,
        });
        self.metrics
            .set_upload_queue(q.outstanding.len(), q.outstanding_bytes);
        drop(q);
        self.shared.work.notify_one();
        ticket
    }

    /// The newest ticket: waiting for it covers every write so far.
    pub fn current_ticket(&self) -> u64 {
        self.shared.queue().last_ticket
    }

    /// The newest ticket of file `id`: an fsync of the file waits for it.
    pub fn file_ticket(&self, id: u64) -> u64 {
        self.shared.queue().last_of(id)
    }

    /// Every ticket up to this one is durable: blocks written under them may leave the cache.
    pub fn durable_ticket(&self) -> u64 {
        self.shared.queue().durable_ticket()
    }

    /// Blocks until every block queued up to `ticket` is durable on the pageserver.
    pub fn wait_durable(&self, ticket: u64) -> Result<(), PageShipError> {
        let decided = wait_for(
            self.shared.queue(),
            &self.shared.changed,
            self.limit,
            |q| match &q.fatal {
                Some(fatal) => Some(Err(PageShipError::Failed(fatal.clone()))),
                None => (q.durable_ticket() >= ticket).then_some(Ok(())),
            },
        );
        decided.unwrap_or(Err(PageShipError::Timeout(self.limit)))
    }

    /// Records a checkpoint marker (DESIGN.md invariant 8) for a checkpoint block just written,
    /// pinned to the page versions durable now. InnoDB fsyncs the data files before writing a
    /// checkpoint, so every page older than the checkpoint is among them.
    pub fn record_checkpoint(&self, checkpoint: Checkpoint, log_end_lsn: Lsn) {
        let q = self.shared.queue();
        if q.durable_ticket() < q.last_ticket {
            tracing::warn!(
                checkpoint_lsn = checkpoint.checkpoint_lsn,
                "checkpoint written while page uploads were queued (flush method without fsync?): \
                 the marker may include pages newer than the checkpoint"
            );
        }
        let req = RecordMarkerRequest {
            term: self.term,
            checkpoint_lsn: checkpoint.checkpoint_lsn,
            checkpoint_end_lsn: checkpoint.end_lsn,
            log_end_lsn_at_write: log_end_lsn,
            page_store_seq: Some(q.last_seq),
        };
        drop(q);
        let (client, timeline) = (self.client.clone(), self.timeline.clone());
        self.runtime.spawn(async move {
            if let Err(e) = client.record_marker(&timeline, &req).await {
                tracing::error!(error = %e, checkpoint_lsn = req.checkpoint_lsn, "recording a checkpoint marker failed");
            }
        });
    }

    /// Status lines for `.fuse-ibd/status`.
    pub fn status(&self) -> String {
        let q = self.shared.queue();
        format!(
            "pageserver_url={}\npage_term={}\nupload_queue={}\npage_store_seq={}\n",
            self.client.http().base_url(),
            self.term,
            q.outstanding.len(),
            q.last_seq
        )
    }
}

struct Uploader {
    client: PageserverClient,
    timeline: String,
    term: u64,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
}

impl Uploader {
    async fn run(self) {
        loop {
            let batch = self.shared.queue().take_batch();
            if batch.is_empty() {
                self.shared.work.notified().await;
                continue;
            }
            let uploads: Vec<PageUpload> = batch
                .iter()
                .map(|(_, b)| PageUpload::new(b.file, b.block, b.lsn, b.image.clone()))
                .collect();
            let started = Instant::now();
            match self.client.put_pages(&self.timeline, self.term, &uploads).await {
                Ok(acked) => {
                    self.metrics
                        .record_upload(batch.len(), started.elapsed().as_secs_f64());
                    let mut q = self.shared.queue();
                    q.acknowledge(&batch);
                    q.last_seq = q.last_seq.max(acked.last_seq);
                    self.metrics
                        .set_upload_queue(q.outstanding.len(), q.outstanding_bytes);
                }
                Err(e) if e.status().is_some_and(|s| s.is_client_error()) => {
                    self.metrics.record_remote_error(Service::Pageserver);
                    // Refused (a newer writer's term, a bad upload): retrying cannot help.
                    tracing::error!(timeline = %self.timeline, error = %e, "page uploads refused: fsyncs of data files will fail");
                    self.shared.queue().fatal = Some(e.to_string());
                    self.shared.changed.notify_all();
                    return;
                }
                Err(e) => {
                    self.metrics.record_remote_error(Service::Pageserver);
                    // Still unreachable after the retry window: put the blocks back (unless a newer
                    // write replaced them) and keep trying; waiting fsyncs fail by their deadline.
                    tracing::warn!(timeline = %self.timeline, error = %e, "page uploads failing; retrying");
                    self.shared.queue().requeue(batch);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            self.shared.changed.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(file: u64, block: u64, fill: u8) -> QueuedBlock {
        QueuedBlock {
            file,
            block,
            lsn: 0,
            image: Bytes::from(vec![fill; 4]),
        }
    }

    #[test]
    fn a_rewrite_replaces_the_queued_image_and_durability_follows_acknowledgements() {
        let mut q = UploadQueue::default();
        let a1 = q.enqueue(block(1, 0, 1));
        let b = q.enqueue(block(1, 1, 2));
        let a2 = q.enqueue(block(1, 0, 3));
        assert_eq!((a1, b, a2), (1, 2, 3));
        assert_eq!(
            q.durable_ticket(),
            1,
            "ticket 1 is covered by ticket 3, which is not durable yet"
        );
        assert_eq!(q.pending.len(), 2, "one image per block");

        let batch = q.take_batch();
        let order: Vec<(u64, u8)> = batch.iter().map(|(t, b)| (*t, b.image[0])).collect();
        assert_eq!(
            order,
            vec![(2, 2), (3, 3)],
            "uploaded in ticket order, newest image of block 0"
        );
        // A write while the batch is in flight queues again: the in-flight image may predate it.
        let a3 = q.enqueue(block(1, 0, 4));
        q.outstanding.remove(&2);
        assert_eq!(q.durable_ticket(), 2);
        q.outstanding.remove(&3);
        assert_eq!(q.durable_ticket(), a3 - 1);
        assert_eq!(q.take_batch().len(), 1);
        q.outstanding.remove(&a3);
        assert_eq!(q.durable_ticket(), a3);
    }

    #[test]
    fn queued_bytes_and_per_file_tickets_follow_writes_acks_and_failures() {
        let mut q = UploadQueue::default();
        let a = q.enqueue(block(1, 0, 1));
        let b = q.enqueue(block(2, 0, 2));
        assert_eq!(
            (q.outstanding_bytes, q.last_of(1), q.last_of(2), q.last_of(3)),
            (8, a, b, 0)
        );
        let a2 = q.enqueue(block(1, 0, 3));
        assert_eq!(q.outstanding_bytes, 8, "a replaced image is no longer counted");
        assert_eq!(q.last_of(1), a2);

        let batch = q.take_batch();
        let c = q.enqueue(block(1, 0, 4));
        assert_eq!(q.outstanding_bytes, 12, "in flight and queued again");
        q.requeue(batch);
        assert_eq!(
            (q.outstanding_bytes, q.pending.len()),
            (8, 2),
            "the failed image of block (1, 0) is dropped: a newer one is queued"
        );
        let batch = q.take_batch();
        q.acknowledge(&batch);
        assert_eq!((q.outstanding_bytes, q.durable_ticket()), (0, c));
    }
}
