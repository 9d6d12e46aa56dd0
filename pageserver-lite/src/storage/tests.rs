//! Storage core without HTTP: versions, branches, terms, recovery, damage, GC and compaction.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ibd_api::pageserver::{
    AcquireTermRequest, CreateFileRequest, CreateTimelineRequest, FileKind, PageAddr, PageUpload, ReadAt,
    RecordMarkerRequest, UpdateFileRequest, BLOCK_SIZE,
};
use prometheus_client::registry::Registry;

use super::record::{self, Scanned, HEADER_LEN, PAGE_META_LEN};
use super::{segment, Store, StoreConfig, StoreError, SyncHook};

fn config(dir: &std::path::Path) -> StoreConfig {
    StoreConfig {
        maintenance_interval: None,
        snapshot_interval: None,
        ..StoreConfig::new(dir)
    }
}

fn open(config: StoreConfig) -> Store {
    Store::open(config, &mut Registry::default()).expect("store opens")
}

fn image(fill: u8) -> Bytes {
    Bytes::from(vec![fill; BLOCK_SIZE])
}

fn at(file: u64, block: u64) -> PageAddr {
    PageAddr::File { file, block }
}

/// A root timeline `main` with term 1 and one page file (space 7); returns its file id.
async fn setup(store: &Store) -> u64 {
    store
        .create_timeline(CreateTimelineRequest {
            id: "main".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    store
        .acquire_term("main", AcquireTermRequest::default())
        .await
        .unwrap();
    store
        .create_file(
            "main",
            CreateFileRequest {
                term: 1,
                path: "db/t.ibd".into(),
                kind: FileKind::Page,
                size: 0,
                space_id: Some(7),
            },
        )
        .await
        .unwrap()
        .id
}

async fn put(store: &Store, timeline: &str, term: u64, file: u64, block: u64, lsn: u64, fill: u8) -> u64 {
    store
        .put_pages(
            timeline,
            term,
            vec![PageUpload::new(file, block, lsn, image(fill))],
        )
        .await
        .unwrap()
        .last_seq
}

fn fill_of(store: &Store, timeline: &str, addr: PageAddr, read_at: ReadAt) -> u8 {
    let page = store.read_page(timeline, addr, read_at).unwrap();
    assert_eq!(page.crc32c, ibd_api::crc32c(&page.image));
    assert!(page.image.iter().all(|&b| b == page.image[0]));
    page.image[0]
}

#[tokio::test]
async fn versions_are_read_latest_at_seq_and_at_lsn() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(config(dir.path()));
    let file = setup(&store).await;
    let s1 = put(&store, "main", 1, file, 0, 100, 1).await;
    let s2 = put(&store, "main", 1, file, 0, 200, 2).await;
    assert!(s2 > s1);
    assert_eq!(fill_of(&store, "main", at(file, 0), ReadAt::Latest), 2);
    assert_eq!(fill_of(&store, "main", at(file, 0), ReadAt::Seq(s1)), 1);
    assert_eq!(fill_of(&store, "main", at(file, 0), ReadAt::Lsn(199)), 1);
    assert_eq!(
        fill_of(
            &store,
            "main",
            PageAddr::Space { space: 7, page: 0 },
            ReadAt::Latest
        ),
        2
    );
    let zero = store.read_page("main", at(file, 5), ReadAt::Latest).unwrap();
    assert!(!zero.found && zero.image.iter().all(|&b| b == 0));
    let versions = store.page_versions("main", at(file, 0), 150, u64::MAX).unwrap();
    assert_eq!(versions.len(), 1);
    assert_eq!((versions[0].seq, versions[0].lsn), (s2, 200));
    assert!(matches!(
        store.read_page("main", at(999, 0), ReadAt::Latest),
        Err(StoreError::FileNotFound(_))
    ));
}

#[tokio::test]
async fn a_branch_sees_its_parent_until_it_overwrites_and_can_start_at_a_marker() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(config(dir.path()));
    let file = setup(&store).await;
    put(&store, "main", 1, file, 0, 100, 1).await;
    put(&store, "main", 1, file, 1, 100, 1).await;
    store
        .record_marker(
            "main",
            RecordMarkerRequest {
                term: 1,
                checkpoint_lsn: 90,
                checkpoint_end_lsn: 95,
                log_end_lsn_at_write: 100,
                page_store_seq: None,
            },
        )
        .await
        .unwrap();
    put(&store, "main", 1, file, 0, 300, 3).await;

    let child = store
        .create_timeline(CreateTimelineRequest {
            id: "child".into(),
            parent: Some("main".into()),
            branch_lsn: Some(150),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(child.parent.as_deref(), Some("main"));
    assert_eq!(
        fill_of(&store, "child", at(file, 0), ReadAt::Latest),
        1,
        "branch point is the marker"
    );
    store
        .acquire_term("child", AcquireTermRequest::default())
        .await
        .unwrap();
    put(&store, "child", 1, file, 1, 400, 4).await;
    assert_eq!(fill_of(&store, "child", at(file, 1), ReadAt::Latest), 4);
    assert_eq!(
        fill_of(&store, "main", at(file, 1), ReadAt::Latest),
        1,
        "the parent is untouched"
    );
    assert_eq!(store.files("child", ReadAt::Latest).unwrap().len(), 1);
    let err = store
        .create_timeline(CreateTimelineRequest {
            id: "early".into(),
            parent: Some("main".into()),
            branch_lsn: Some(10),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NoMarker { .. }), "{err}");
}

#[tokio::test]
async fn terms_cannot_be_exhausted_or_overflowed_by_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(config(dir.path()));
    let file = setup(&store).await;
    let acquire = |term| store.acquire_term("main", AcquireTermRequest { term });
    let refused = acquire(Some(u64::MAX)).await;
    assert!(matches!(refused, Err(StoreError::BadRequest(_))), "{refused:?}");
    assert_eq!(
        acquire(Some(super::writer::MAX_TERM)).await.unwrap().term,
        super::writer::MAX_TERM
    );
    // No successor is left: refused cleanly, and the store keeps serving the current writer.
    let exhausted = acquire(None).await;
    assert!(
        matches!(exhausted, Err(StoreError::BadRequest(_))),
        "{exhausted:?}"
    );
    put(&store, "main", super::writer::MAX_TERM, file, 0, 100, 7).await;
    assert_eq!(fill_of(&store, "main", at(file, 0), ReadAt::Latest), 7);
}

#[tokio::test]
async fn stale_terms_and_bad_crcs_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(config(dir.path()));
    let file = setup(&store).await;
    put(&store, "main", 1, file, 0, 100, 1).await;
    assert_eq!(
        store
            .acquire_term("main", AcquireTermRequest::default())
            .await
            .unwrap()
            .term,
        2
    );
    let stale = store
        .put_pages("main", 1, vec![PageUpload::new(file, 0, 200, image(9))])
        .await;
    assert!(
        matches!(stale, Err(StoreError::StaleTerm { given: 1, current: 2 })),
        "{stale:?}"
    );
    let mut bad = PageUpload::new(file, 0, 200, image(9));
    bad.crc32c ^= 1;
    let good = PageUpload::new(file, 1, 200, image(9));
    let refused = store.put_pages("main", 2, vec![good, bad]).await;
    assert!(matches!(refused, Err(StoreError::CrcMismatch(_))), "{refused:?}");
    assert_eq!(fill_of(&store, "main", at(file, 0), ReadAt::Latest), 1);
    assert!(
        !store
            .read_page("main", at(file, 1), ReadAt::Latest)
            .unwrap()
            .found
    );
    let short = store
        .put_pages(
            "main",
            2,
            vec![PageUpload::new(file, 0, 0, Bytes::from_static(b"short"))],
        )
        .await;
    assert!(matches!(short, Err(StoreError::BadRequest(_))), "{short:?}");
}

#[tokio::test]
async fn truncation_hides_older_blocks_and_unlink_hides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(config(dir.path()));
    let file = setup(&store).await;
    put(&store, "main", 1, file, 3, 100, 1).await;
    let resize = |size| UpdateFileRequest {
        term: 1,
        size: Some(size),
        ..Default::default()
    };
    store
        .update_file("main", file, resize(BLOCK_SIZE as u64 * 8))
        .await
        .unwrap();
    let before = store.timeline("main").unwrap().last_seq;
    store
        .update_file("main", file, resize(BLOCK_SIZE as u64 * 2))
        .await
        .unwrap();
    store
        .update_file("main", file, resize(BLOCK_SIZE as u64 * 8))
        .await
        .unwrap();
    assert!(
        !store
            .read_page("main", at(file, 3), ReadAt::Latest)
            .unwrap()
            .found
    );
    assert_eq!(fill_of(&store, "main", at(file, 3), ReadAt::Seq(before)), 1);
    let renamed = store
        .update_file(
            "main",
            file,
            UpdateFileRequest {
                term: 1,
                path: Some("db/u.ibd".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(renamed.path, "db/u.ibd");
    let seq = store.unlink_file("main", file, 1).await.unwrap();
    assert!(store.files("main", ReadAt::Latest).unwrap().is_empty());
    assert_eq!(store.files("main", ReadAt::Seq(seq - 1)).unwrap().len(), 1);
}

#[tokio::test]
async fn reopening_replays_the_log_and_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let file = {
        let store = open(config(dir.path()));
        let file = setup(&store).await;
        put(&store, "main", 1, file, 0, 100, 1).await;
        file
    }; // dropped without shutdown: a crash
    let store = open(config(dir.path()));
    assert_eq!(fill_of(&store, "main", at(file, 0), ReadAt::Latest), 1);
    assert_eq!(store.timeline("main").unwrap().term, 1);
    put(&store, "main", 1, file, 1, 100, 2).await;
    store.shutdown().await;
    drop(store);
    assert!(super::snapshot::path(dir.path()).exists());

    let store = open(config(dir.path()));
    put(&store, "main", 1, file, 2, 100, 3).await;
    drop(store);
    let store = open(config(dir.path()));
    for (block, fill) in [(0, 1), (1, 2), (2, 3)] {
        assert_eq!(fill_of(&store, "main", at(file, block), ReadAt::Latest), fill);
    }
    let files = store.files("main", ReadAt::Latest).unwrap();
    assert_eq!(files[0].space_id, Some(7));
    // A second store on the same directory is refused.
    let second = Store::open(config(dir.path()), &mut Registry::default());
    assert!(matches!(second, Err(StoreError::Unavailable(_))));
}

fn newest_segment(dir: &std::path::Path) -> std::path::PathBuf {
    let seg_dir = dir.join("segments");
    let id = *segment::list(&seg_dir).unwrap().last().unwrap();
    segment::path(&seg_dir, id)
}

#[tokio::test]
async fn a_torn_tail_is_truncated_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let file = {
        let store = open(config(dir.path()));
        let file = setup(&store).await;
        put(&store, "main", 1, file, 0, 100, 1).await;
        file
    };
    let seg = newest_segment(dir.path());
    let good_len = std::fs::metadata(&seg).unwrap().len();
    // Half a record: what a crash in the middle of a group commit leaves.
    let mut bytes = std::fs::read(&seg).unwrap();
    let partial: Vec<u8> = bytes[bytes.len() - BLOCK_SIZE - 72..bytes.len() - 5000].to_vec();
    bytes.extend_from_slice(&partial);
    std::fs::write(&seg, &bytes).unwrap();

    let mut registry = Registry::default();
    let store = Store::open(config(dir.path()), &mut registry).unwrap();
    assert_eq!(store.metrics().torn_tails.get(), 1);
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), good_len);
    assert_eq!(fill_of(&store, "main", at(file, 0), ReadAt::Latest), 1);
}

#[tokio::test]
async fn a_damaged_page_is_never_served_and_the_rest_stays_available() {
    let dir = tempfile::tempdir().unwrap();
    let file = {
        let store = open(config(dir.path()));
        let file = setup(&store).await;
        put(&store, "main", 1, file, 0, 100, 1).await;
        put(&store, "main", 1, file, 1, 100, 2).await;
        file
    };
    let seg = newest_segment(dir.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    let mut first_page = None;
    record::scan(
        &bytes,
        0,
        |r| {
            if matches!(r.record, Scanned::Page { .. }) && first_page.is_none() {
                first_page = Some(r.offset);
            }
        },
        |_| {},
    );
    bytes[first_page.unwrap() as usize + HEADER_LEN + PAGE_META_LEN + 10] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();

    let store = open(config(dir.path()));
    assert_eq!(store.metrics().corrupt_records.get(), 1);
    let err = store.read_page("main", at(file, 0), ReadAt::Latest).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    assert_eq!(fill_of(&store, "main", at(file, 1), ReadAt::Latest), 2);
}

#[tokio::test]
async fn gc_and_compaction_bound_disk_usage_and_keep_branch_points() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        segment_size: 256 << 10,
        retention: Duration::ZERO,
        ..config(dir.path())
    };
    let store = open(cfg.clone());
    let file = setup(&store).await;
    put(&store, "main", 1, file, 100, 1, 42).await;
    store
        .create_timeline(CreateTimelineRequest {
            id: "child".into(),
            parent: Some("main".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let working_set = 16u64;
    for round in 0..60u64 {
        let pages = (0..working_set)
            .map(|b| PageUpload::new(file, b, round, image(round as u8)))
            .collect();
        store.put_pages("main", 1, pages).await.unwrap();
        put(&store, "main", 1, file, 100, round + 2, 43).await;
        if round % 10 == 9 {
            store.maintain().await.unwrap();
        }
    }
    let written = 60 * (working_set + 1) * BLOCK_SIZE as u64;
    let on_disk = store.metrics().disk_bytes.get() as u64;
    assert!(
        on_disk < 4 * (working_set + 1) * BLOCK_SIZE as u64 + 2 * cfg.segment_size,
        "{on_disk} bytes on disk after writing {written}"
    );
    assert!(store.metrics().compactions.get() > 0);
    assert_eq!(
        fill_of(&store, "child", at(file, 100), ReadAt::Latest),
        42,
        "the branch point survives GC"
    );
    assert_eq!(fill_of(&store, "main", at(file, 3), ReadAt::Latest), 59);
    store.shutdown().await;
    drop(store);

    // From the snapshot, then (snapshot gone) from the log alone: compaction copied the timeline
    // and file records behind the pages that need them, and replay must not care.
    for remove_snapshot in [false, true] {
        if remove_snapshot {
            std::fs::remove_file(super::snapshot::path(dir.path())).unwrap();
        }
        let store = open(cfg.clone());
        assert_eq!(fill_of(&store, "child", at(file, 100), ReadAt::Latest), 42);
        assert_eq!(fill_of(&store, "main", at(file, 100), ReadAt::Latest), 43);
        for b in 0..working_set {
            assert_eq!(fill_of(&store, "main", at(file, b), ReadAt::Latest), 59);
        }
        assert_eq!(store.timeline("main").unwrap().term, 1);
    }
}

#[tokio::test]
async fn concurrent_uploads_all_land_with_distinct_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(config(dir.path()));
    let file = setup(&store).await;
    let tasks: Vec<_> = (0..32u64)
        .map(|b| {
            let store = store.clone();
            tokio::spawn(async move { put(&store, "main", 1, file, b, 1, b as u8).await })
        })
        .collect();
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap());
    }
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), 32, "every upload got its own seq");
    for b in 0..32 {
        assert_eq!(fill_of(&store, "main", at(file, b), ReadAt::Latest), b as u8);
    }
}

fn metric_value(registry: &Registry, name: &str) -> f64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_queued_during_a_commit_share_one_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = Registry::default();
    let store = Store::open(config(dir.path()), &mut registry).unwrap();
    let file = setup(&store).await;
    let fsyncs = |r: &Registry| metric_value(r, "fsync_duration_seconds_count");
    let before = fsyncs(&registry);
    // Hold the writer up (it needs the state lock to validate) while 16 uploads queue behind it.
    let guard = store.inner.state.write().unwrap();
    let tasks: Vec<_> = (0..16u64)
        .map(|b| {
            let store = store.clone();
            tokio::spawn(async move { put(&store, "main", 1, file, b, 1, b as u8).await })
        })
        .collect();
    // A blocking sleep: the uploads run on the runtime's workers, this test body is not one.
    std::thread::sleep(Duration::from_millis(200));
    drop(guard);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(fsyncs(&registry) - before, 1.0, "16 uploads, one fdatasync");
    for b in 0..16 {
        assert_eq!(fill_of(&store, "main", at(file, b), ReadAt::Latest), b as u8);
    }
}

#[tokio::test]
async fn gc_drops_the_pages_of_unlinked_files_except_what_a_branch_sees() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(StoreConfig {
        retention: Duration::ZERO,
        ..config(dir.path())
    });
    let file = setup(&store).await;
    for b in 0..4 {
        put(&store, "main", 1, file, b, 1, 5).await;
    }
    store
        .create_timeline(CreateTimelineRequest {
            id: "before-drop".into(),
            parent: Some("main".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let temp = store
        .create_file(
            "main",
            CreateFileRequest {
                term: 1,
                path: "db/#sql-1.ibd".into(),
                kind: FileKind::Page,
                size: 0,
                space_id: Some(8),
            },
        )
        .await
        .unwrap()
        .id;
    for b in 0..4 {
        put(&store, "main", 1, temp, b, 1, 6).await;
    }
    store.unlink_file("main", file, 1).await.unwrap();
    store.unlink_file("main", temp, 1).await.unwrap();
    let report = store.maintain().await.unwrap();
    // `temp` never existed for the branch: all its pages go; `file`'s stay for the branch.
    assert_eq!(report.versions_dropped, 4);
    assert_eq!(fill_of(&store, "before-drop", at(file, 2), ReadAt::Latest), 5);
    assert_eq!(store.metrics().versions.get(), 4);
}

/// A [`SyncHook`] that can hold syncs open (as a slow disk would) or fail them.
#[derive(Debug, Default)]
struct SyncGate {
    state: std::sync::Mutex<GateState>,
    changed: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    closed: bool,
    fail: bool,
    /// Syncs held open right now.
    waiting: u32,
    /// Syncs that completed successfully.
    completed: u64,
}

impl SyncGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap()
    }

    fn set_closed(&self, closed: bool) {
        self.lock().closed = closed;
        self.changed.notify_all();
    }

    fn completed(&self) -> u64 {
        self.lock().completed
    }

    /// Blocks until a sync is being held open.
    fn wait_for_held_sync(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut s = self.lock();
        while s.waiting == 0 {
            assert!(std::time::Instant::now() < deadline, "no sync started");
            s = self.changed.wait_timeout(s, Duration::from_millis(50)).unwrap().0;
        }
    }
}

impl SyncHook for SyncGate {
    fn synced(&self, _segment: u64, _durable_len: u64) -> std::io::Result<()> {
        let mut s = self.lock();
        s.waiting += 1;
        self.changed.notify_all();
        while s.closed {
            s = self.changed.wait(s).unwrap();
        }
        s.waiting -= 1;
        if s.fail {
            return Err(std::io::Error::other("injected fsync failure"));
        }
        s.completed += 1;
        self.changed.notify_all();
        Ok(())
    }
}

/// Runs `write` while the gate holds syncs open: it must not complete until the gate opens, and
/// when it completes, the sync covering it must have completed. `while_held` runs while the sync
/// is held. Returns the result of `write`.
async fn assert_waits_for_its_sync<T: Send + 'static>(
    gate: &Arc<SyncGate>,
    what: &str,
    write: impl std::future::Future<Output = T> + Send + 'static,
    while_held: impl FnOnce(),
) -> T {
    gate.set_closed(true);
    let before = gate.completed();
    let observer = gate.clone();
    let task = tokio::spawn(async move {
        let result = write.await;
        (result, observer.completed())
    });
    let held = gate.clone();
    tokio::task::spawn_blocking(move || held.wait_for_held_sync())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    while_held();
    assert!(
        !task.is_finished(),
        "{what} was answered while its fsync had not completed"
    );
    gate.set_closed(false);
    let (result, completed_at_answer) = task.await.unwrap();
    assert!(
        completed_at_answer > before,
        "{what} was answered before the sync covering it completed"
    );
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_acknowledged_or_visible_before_the_fsync_covering_it_completes() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(SyncGate::default());
    let store = open(StoreConfig {
        sync_hook: Some(gate.clone()),
        ..config(dir.path())
    });
    let file = setup(&store).await;
    put(&store, "main", 1, file, 0, 100, 1).await;

    let s = store.clone();
    let upload = async move { put(&s, "main", 1, file, 0, 200, 2).await };
    let seq = assert_waits_for_its_sync(&gate, "an upload", upload, || {
        assert_eq!(
            fill_of(&store, "main", at(file, 0), ReadAt::Latest),
            1,
            "a page is visible before it is durable"
        );
    })
    .await;
    assert_eq!(fill_of(&store, "main", at(file, 0), ReadAt::Seq(seq)), 2);

    // Namespace changes, markers and terms are acknowledged only once durable as well.
    let s = store.clone();
    let create = async move {
        s.create_file(
            "main",
            CreateFileRequest {
                term: 1,
                path: "db/u.ibd".into(),
                kind: FileKind::Page,
                size: 0,
                space_id: None,
            },
        )
        .await
        .unwrap()
    };
    assert_waits_for_its_sync(&gate, "a file creation", create, || {}).await;
    let s = store.clone();
    let marker = async move {
        s.record_marker(
            "main",
            RecordMarkerRequest {
                term: 1,
                checkpoint_lsn: 150,
                checkpoint_end_lsn: 160,
                log_end_lsn_at_write: 200,
                page_store_seq: None,
            },
        )
        .await
        .unwrap()
    };
    assert_waits_for_its_sync(&gate, "a checkpoint marker", marker, || {}).await;
    let s = store.clone();
    let term = async move {
        s.acquire_term("main", AcquireTermRequest::default())
            .await
            .unwrap()
    };
    assert_eq!(
        assert_waits_for_its_sync(&gate, "a term", term, || {}).await.term,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_is_never_acknowledged_and_stops_all_writes() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(SyncGate::default());
    let store = open(StoreConfig {
        sync_hook: Some(gate.clone()),
        ..config(dir.path())
    });
    let file = setup(&store).await;
    put(&store, "main", 1, file, 0, 100, 1).await;
    gate.lock().fail = true;
    let failed = store
        .put_pages("main", 1, vec![PageUpload::new(file, 0, 200, image(2))])
        .await;
    assert!(matches!(failed, Err(StoreError::Unavailable(_))), "{failed:?}");
    assert_eq!(fill_of(&store, "main", at(file, 0), ReadAt::Latest), 1);
    // The file's state after a failed fsync is unknown: nothing is written on top of it.
    gate.lock().fail = false;
    let refused = store
        .put_pages("main", 1, vec![PageUpload::new(file, 1, 200, image(3))])
        .await;
    assert!(matches!(refused, Err(StoreError::Unavailable(_))), "{refused:?}");
    let refused = store.acquire_term("main", AcquireTermRequest::default()).await;
    assert!(matches!(refused, Err(StoreError::Unavailable(_))), "{refused:?}");
    assert_eq!(fill_of(&store, "main", at(file, 0), ReadAt::Latest), 1);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test]
async fn an_upload_cut_short_by_a_power_loss_is_discarded_whole() {
    const PAGES: u64 = 8;
    let template = tempfile::tempdir().unwrap();
    let (file, batch_start, batch_end) = {
        let store = open(config(template.path()));
        let file = setup(&store).await;
        let first = (0..4).map(|b| PageUpload::new(file, b, 100, image(1))).collect();
        store.put_pages("main", 1, first).await.unwrap();
        let batch_start = std::fs::metadata(newest_segment(template.path())).unwrap().len();
        let second = (0..PAGES)
            .map(|b| PageUpload::new(file, b, 200, image(2)))
            .collect();
        store.put_pages("main", 1, second).await.unwrap();
        let batch_end = std::fs::metadata(newest_segment(template.path())).unwrap().len();
        (file, batch_start, batch_end)
    }; // dropped without shutdown: a crash
    let record = (HEADER_LEN + PAGE_META_LEN + BLOCK_SIZE) as u64;
    assert!(
        batch_end > batch_start + PAGES * record,
        "the upload ends with a trailer"
    );

    // What a power loss can leave of the second upload: any prefix of it, including every whole
    // page record without the trailer; or everything but a page in the middle (the disk wrote the
    // sectors out of order).
    type Damage = Box<dyn Fn(&mut Vec<u8>)>;
    let mut damage: Vec<(String, Damage)> = Vec::new();
    for cut in (0..=PAGES).map(|i| batch_start + i * record).chain([
        batch_start + 10,
        batch_start + record + 5000,
        batch_end - 1,
    ]) {
        damage.push((
            format!("cut at {cut}"),
            Box::new(move |b| b.truncate(cut as usize)),
        ));
    }
    damage.push((
        "page 3 never written".into(),
        Box::new(move |b| {
            let at = (batch_start + 3 * record) as usize;
            b[at..at + record as usize].fill(0);
        }),
    ));
    for (what, damage) in damage {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(template.path(), dir.path());
        let seg = newest_segment(dir.path());
        let mut bytes = std::fs::read(&seg).unwrap();
        damage(&mut bytes);
        std::fs::write(&seg, &bytes).unwrap();

        let store = open(config(dir.path()));
        for b in 0..PAGES {
            let page = store.read_page("main", at(file, b), ReadAt::Latest).unwrap();
            let want = if b < 4 { 1 } else { 0 };
            assert_eq!(
                page.image[0], want,
                "{what}: block {b} shows part of the torn upload"
            );
        }
        if bytes.len() as u64 > batch_start {
            assert_eq!(store.metrics().torn_tails.get(), 1, "{what}");
            assert_eq!(store.metrics().corrupt_records.get(), 0, "{what}");
            assert_eq!(std::fs::metadata(&seg).unwrap().len(), batch_start, "{what}");
        }
        // The store goes on from there, and a restart sees the same.
        put(&store, "main", 1, file, 7, 300, 3).await;
        drop(store);
        let store = open(config(dir.path()));
        assert_eq!(fill_of(&store, "main", at(file, 0), ReadAt::Latest), 1, "{what}");
        assert_eq!(fill_of(&store, "main", at(file, 7), ReadAt::Latest), 3, "{what}");
        assert!(
            !store
                .read_page("main", at(file, 5), ReadAt::Latest)
                .unwrap()
                .found,
            "{what}"
        );
    }
}

/// Sealed segments and the bytes in them.
fn segment_files(dir: &std::path::Path) -> Vec<(u64, u64)> {
    let seg_dir = dir.join("segments");
    segment::list(&seg_dir)
        .unwrap()
        .into_iter()
        .map(|id| (id, std::fs::metadata(segment::path(&seg_dir, id)).unwrap().len()))
        .collect()
}

#[tokio::test]
async fn segments_of_live_metadata_are_kept_and_dead_metadata_is_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    // Every write in a segment of its own.
    let cfg = StoreConfig {
        segment_size: 1,
        ..config(dir.path())
    };
    let store = open(cfg.clone());
    let file = setup(&store).await;
    for i in 0..10 {
        store
            .create_file(
                "main",
                CreateFileRequest {
                    term: 1,
                    path: format!("db/t{i}.frm"),
                    kind: FileKind::Generic,
                    size: 0,
                    space_id: None,
                },
            )
            .await
            .unwrap();
        store
            .record_marker(
                "main",
                RecordMarkerRequest {
                    term: 1,
                    checkpoint_lsn: i,
                    checkpoint_end_lsn: i,
                    log_end_lsn_at_write: i,
                    page_store_seq: None,
                },
            )
            .await
            .unwrap();
    }
    // Timeline, term, files, markers: all live, so nothing is garbage.
    let before = segment_files(dir.path());
    assert!(before.len() > 20);
    let report = store.maintain().await.unwrap();
    assert_eq!(report.segments_compacted, 0, "{report:?}");
    assert_eq!(segment_files(dir.path()), before);

    // Each new term supersedes the one before: those segments hold only dead bytes.
    for term in 2..=30 {
        store
            .acquire_term("main", AcquireTermRequest { term: Some(term) })
            .await
            .unwrap();
    }
    let grown = segment_files(dir.path());
    let report = store.maintain().await.unwrap();
    // The segments of terms 1 to 29 hold nothing live any more; term 30's is the active one.
    assert_eq!(report.segments_compacted, 29, "{report:?}");
    assert_eq!(report.bytes_copied, 0, "only dead records in them: {report:?}");
    let after = segment_files(dir.path());
    assert_eq!(after.len(), grown.len() - 29);
    let bytes = |segs: &[(u64, u64)]| segs.iter().map(|s| s.1).sum::<u64>();
    assert!(bytes(&after) < bytes(&grown));
    // And again after a restart, from the snapshot or from the log alone.
    store.shutdown().await;
    drop(store);
    for remove_snapshot in [false, true] {
        if remove_snapshot {
            std::fs::remove_file(super::snapshot::path(dir.path())).unwrap();
        }
        let store = open(cfg.clone());
        assert_eq!(store.timeline("main").unwrap().term, 30);
        assert_eq!(store.files("main", ReadAt::Latest).unwrap().len(), 11);
        assert_eq!(store.markers("main").unwrap().len(), 10);
        assert_eq!(
            store.file("main", file, ReadAt::Latest).unwrap().space_id,
            Some(7)
        );
        let report = store.maintain().await.unwrap();
        assert_eq!(report.segments_compacted, 0, "{report:?}");
        store.shutdown().await;
    }
}

#[tokio::test]
async fn reads_and_branches_below_the_gc_horizon_are_refused_also_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        segment_size: 1,
        retention: Duration::ZERO,
        ..config(dir.path())
    };
    let store = open(cfg.clone());
    let file = setup(&store).await;
    let s1 = put(&store, "main", 1, file, 0, 100, 1).await;
    let branch = |id: &str, seq| CreateTimelineRequest {
        id: id.into(),
        parent: Some("main".into()),
        branch_seq: Some(seq),
        ..Default::default()
    };
    store.create_timeline(branch("kept", s1)).await.unwrap();
    let s2 = put(&store, "main", 1, file, 0, 200, 2).await;
    let s3 = put(&store, "main", 1, file, 0, 300, 3).await;
    put(&store, "main", 1, file, 1, 50, 9).await;
    assert_eq!(fill_of(&store, "main", at(file, 0), ReadAt::Seq(s2)), 2);

    // Version 2 goes (its successor is out of the retention window and no branch sees it);
    // version 1 stays for the branch.
    assert_eq!(store.maintain().await.unwrap().versions_dropped, 1);
    fn below<T>(r: Result<T, StoreError>) -> bool {
        matches!(r, Err(StoreError::BelowGcHorizon { .. }))
    }
    let check = |store: &Store| {
        let info = store.timeline("main").unwrap();
        assert_eq!((info.gc_horizon_seq, info.gc_horizon_lsn), (s3, 300));
        // Version 2 is gone: what it was the answer for is refused, not answered with version 1.
        assert!(below(store.read_page("main", at(file, 0), ReadAt::Seq(s2))));
        assert!(below(store.read_page("main", at(file, 0), ReadAt::Lsn(250))));
        assert!(below(store.read_pages(
            "main",
            &[at(file, 1)],
            ReadAt::Seq(s3 - 1)
        )));
        // The branch point, the horizon and after it read as before.
        assert_eq!(fill_of(store, "main", at(file, 0), ReadAt::Seq(s1)), 1);
        assert_eq!(fill_of(store, "main", at(file, 0), ReadAt::Seq(s3)), 3);
        assert_eq!(fill_of(store, "main", at(file, 0), ReadAt::Lsn(300)), 3);
        assert_eq!(fill_of(store, "main", at(file, 0), ReadAt::Latest), 3);
        assert_eq!(fill_of(store, "kept", at(file, 0), ReadAt::Latest), 1);
        assert_eq!(fill_of(store, "main", at(file, 1), ReadAt::Latest), 9);
    };
    check(&store);
    let err = store.create_timeline(branch("late", s2)).await.unwrap_err();
    assert!(matches!(err, StoreError::BelowGcHorizon { .. }), "{err}");
    assert!(err.to_string().contains("GC horizon"), "{err}");
    store.create_timeline(branch("again", s1)).await.unwrap();
    store.create_timeline(branch("at-horizon", s3)).await.unwrap();
    assert_eq!(fill_of(&store, "at-horizon", at(file, 0), ReadAt::Latest), 3);
    // GC again: nothing new to drop, the horizon stays.
    assert_eq!(store.maintain().await.unwrap().versions_dropped, 0);
    check(&store);

    // Durable: after a crash (the snapshot compaction wrote), and from the log alone.
    drop(store);
    for remove_snapshot in [false, true] {
        if remove_snapshot {
            std::fs::remove_file(super::snapshot::path(dir.path())).unwrap();
        }
        let store = open(cfg.clone());
        check(&store);
        let err = store.create_timeline(branch("late", s2)).await.unwrap_err();
        assert!(matches!(err, StoreError::BelowGcHorizon { .. }), "{err}");
    }
}

fn create_req(path: &str, space_id: Option<u32>) -> CreateFileRequest {
    CreateFileRequest {
        term: 1,
        path: path.into(),
        kind: FileKind::Page,
        size: 0,
        space_id,
    }
}

fn rename_req(path: &str, replace: bool) -> UpdateFileRequest {
    UpdateFileRequest {
        term: 1,
        path: Some(path.into()),
        replace,
        ..Default::default()
    }
}

fn live_paths(store: &Store, timeline: &str, at: ReadAt) -> Vec<(String, u64)> {
    let mut paths: Vec<_> = store
        .files(timeline, at)
        .unwrap()
        .into_iter()
        .map(|f| (f.path, f.id))
        .collect();
    paths.sort();
    paths
}

#[tokio::test]
async fn a_path_names_one_live_file_and_rename_replaces_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        segment_size: 1,
        ..config(dir.path())
    };
    let store = open(cfg.clone());
    let t = setup(&store).await; // db/t.ibd
    let err = store
        .create_file("main", create_req("db/t.ibd", None))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::PathExists { file, .. } if file == t),
        "{err}"
    );
    // InnoDB's ALTER TABLE: build #sql-1.ibd, then rename it over t.ibd.
    let sql = store
        .create_file("main", create_req("db/#sql-1.ibd", None))
        .await
        .unwrap()
        .id;
    put(&store, "main", 1, t, 0, 100, 1).await;
    put(&store, "main", 1, sql, 0, 200, 2).await;
    let err = store
        .update_file("main", sql, rename_req("db/t.ibd", false))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::PathExists { file, .. } if file == t),
        "{err}"
    );
    let before = store.timeline("main").unwrap().last_seq;
    assert_eq!(
        live_paths(&store, "main", ReadAt::Latest),
        vec![("db/#sql-1.ibd".into(), sql), ("db/t.ibd".into(), t)],
        "a refused rename changes nothing"
    );

    let renamed = store
        .update_file("main", sql, rename_req("db/t.ibd", true))
        .await
        .unwrap();
    assert_eq!((renamed.id, renamed.path.as_str()), (sql, "db/t.ibd"));
    // One change, one seq: before it both files at their old paths, from it only the new one.
    assert_eq!(renamed.seq, before + 1);
    assert_eq!(store.timeline("main").unwrap().last_seq, before + 1);
    let check = |store: &Store| {
        assert_eq!(
            live_paths(store, "main", ReadAt::Latest),
            vec![("db/t.ibd".into(), sql)]
        );
        assert_eq!(
            live_paths(store, "main", ReadAt::Seq(before)),
            vec![("db/#sql-1.ibd".into(), sql), ("db/t.ibd".into(), t)]
        );
        let gone = store.read_page("main", at(t, 0), ReadAt::Latest);
        assert!(matches!(gone, Err(StoreError::FileNotFound(_))), "{gone:?}");
        assert_eq!(fill_of(store, "main", at(t, 0), ReadAt::Seq(before)), 1);
        assert_eq!(fill_of(store, "main", at(sql, 0), ReadAt::Latest), 2);
    };
    check(&store);
    // The replaced path is free again only for the renamed file; the old name is free.
    let err = store
        .create_file("main", create_req("db/t.ibd", None))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::PathExists { file, .. } if file == sql),
        "{err}"
    );
    let again = store
        .create_file("main", create_req("db/#sql-1.ibd", None))
        .await
        .unwrap();
    assert_ne!(again.id, sql);
    store.unlink_file("main", again.id, 1).await.unwrap();

    // It is one record, alone in its batch.
    let seg_dir = dir.path().join("segments");
    let mut batches_with_it = Vec::new();
    for id in segment::list(&seg_dir).unwrap() {
        let bytes = std::fs::read(segment::path(&seg_dir, id)).unwrap();
        record::scan_batches(
            &bytes,
            0,
            |records| {
                let is_it = |r: &record::RawRecord<'_>| {
                    matches!(r.record, Scanned::Meta(record::MetaRecord::RenameReplace { .. }))
                };
                if records.iter().any(is_it) {
                    batches_with_it.push(records.len());
                }
            },
            |_| {},
        );
    }
    assert_eq!(batches_with_it, vec![1]);

    // Durable and still unique after a restart, replayed or from the snapshot.
    drop(store);
    let store = open(cfg.clone());
    check(&store);
    let err = store
        .create_file("main", create_req("db/t.ibd", None))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::PathExists { .. }), "{err}");
    store.shutdown().await;
    drop(store);
    let store = open(cfg.clone());
    check(&store);
    let err = store
        .update_file("main", sql, rename_req("db/t.ibd", true))
        .await
        .unwrap();
    assert_eq!(
        err.path, "db/t.ibd",
        "renaming a file onto its own path is no change"
    );

    // A branch sees its parent's files: their paths are taken there too, and a rename over one
    // of them replaces it on the branch only.
    store
        .create_timeline(CreateTimelineRequest {
            id: "b".into(),
            parent: Some("main".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    store
        .acquire_term("b", AcquireTermRequest::default())
        .await
        .unwrap();
    let err = store
        .create_file("b", create_req("db/t.ibd", None))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::PathExists { file, .. } if file == sql),
        "{err}"
    );
    let new = store
        .create_file("b", create_req("db/#sql-2.ibd", None))
        .await
        .unwrap()
        .id;
    store
        .update_file("b", new, rename_req("db/t.ibd", true))
        .await
        .unwrap();
    assert_eq!(
        live_paths(&store, "b", ReadAt::Latest),
        vec![("db/t.ibd".into(), new)]
    );
    assert_eq!(
        live_paths(&store, "main", ReadAt::Latest),
        vec![("db/t.ibd".into(), sql)]
    );
    let bad = store
        .update_file(
            "b",
            new,
            UpdateFileRequest {
                term: 1,
                replace: true,
                ..Default::default()
            },
        )
        .await;
    assert!(matches!(bad, Err(StoreError::BadRequest(_))), "{bad:?}");
}

#[tokio::test]
async fn a_timeline_whose_parent_record_is_lost_is_refused_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        segment_size: 1,
        retention: Duration::ZERO,
        ..config(dir.path())
    };
    let file = {
        let store = open(cfg.clone());
        let file = setup(&store).await;
        put(&store, "main", 1, file, 0, 100, 1).await;
        store
            .create_timeline(CreateTimelineRequest {
                id: "child".into(),
                parent: Some("main".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        store
            .acquire_term("child", AcquireTermRequest::default())
            .await
            .unwrap();
        put(&store, "child", 1, file, 0, 200, 2).await;
        put(&store, "child", 1, file, 0, 300, 3).await;
        store
            .create_timeline(CreateTimelineRequest {
                id: "other".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        file
    }; // crash
       // Damage the record that created `main` (the first segment holds just it).
    let seg_dir = dir.path().join("segments");
    let first = segment::path(&seg_dir, segment::list(&seg_dir).unwrap()[0]);
    let mut bytes = std::fs::read(&first).unwrap();
    assert!(String::from_utf8_lossy(&bytes).contains("\"main\""));
    bytes[HEADER_LEN + 5] ^= 0xff;
    std::fs::write(&first, &bytes).unwrap();

    let store = open(cfg.clone());
    assert!(store.metrics().corrupt_records.get() > 0);
    let err = store.read_page("child", at(file, 0), ReadAt::Latest).unwrap_err();
    assert!(matches!(err, StoreError::TimelineDamaged(_)), "{err}");
    let err = store
        .put_pages("child", 1, vec![PageUpload::new(file, 1, 400, image(4))])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::TimelineDamaged(_)), "{err}");
    let versions = store.metrics().versions.get();
    assert_eq!(store.timelines().len(), 2, "child and other are listed");
    // Maintenance and everything else go on; GC keeps all of the damaged timeline.
    assert_eq!(store.maintain().await.unwrap().versions_dropped, 0);
    assert_eq!(store.metrics().versions.get(), versions);
    store
        .acquire_term("other", AcquireTermRequest::default())
        .await
        .unwrap();
    let f = store
        .create_file("other", create_req("x.ibd", None))
        .await
        .unwrap()
        .id;
    put(&store, "other", 1, f, 0, 1, 7).await;
    assert_eq!(fill_of(&store, "other", at(f, 0), ReadAt::Latest), 7);
}
