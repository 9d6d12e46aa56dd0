//! A redo log resize goes through walsync: MariaDB started with another `innodb_log_file_size`
//! writes `ib_logfile101` and renames it over `ib_logfile0` with a new first LSN; the mount
//! records the new geometry and keeps shipping, so a node wiped after the resize comes back
//! with every commit and the new log size.

use std::path::Path;
use std::time::{Duration, Instant};

use ibd_api::walsync::{GeometryRecord, WalsyncClient};
use ibd_e2e::bank::{self, Workload};
use ibd_e2e::{install_db, prereq, remote, FuseIbd, MariaDb, Service};

const TIMELINE: &str = "main";
const SMALL: &[&str] = &["--innodb-flush-neighbors=0", "--innodb-log-file-size=16M"];
const LARGE: &[&str] = &["--innodb-flush-neighbors=0", "--innodb-log-file-size=32M"];
const MIB: u64 = 1 << 20;

fn mount(root: &Path, node: &str, pageserver: &Service, walsync: &Service) -> FuseIbd {
    FuseIbd::mount_node(root, node, pageserver, walsync, TIMELINE, &[]).unwrap()
}

fn geometry_history(walsync: &Service) -> Vec<GeometryRecord> {
    remote::runtime()
        .block_on(
            WalsyncClient::new(&walsync.url)
                .unwrap()
                .geometry_history(TIMELINE),
        )
        .unwrap()
        .geometry
}

/// Waits until walsync's durable LSN reaches what the server has flushed.
fn wait_shipped(db: &MariaDb, walsync: &Service) {
    let client = WalsyncClient::new(&walsync.url).unwrap();
    let rt = remote::runtime();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let flushed = db.flushed_lsn().unwrap();
        let durable = rt.block_on(client.status(TIMELINE)).unwrap().durable_lsn;
        if durable.is_some_and(|d| d >= flushed) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "walsync durable {durable:?}, server flushed {flushed}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_log_resized_at_startup_reaches_walsync_and_a_wiped_node_keeps_every_commit() {
    if !prereq::require_mariadb_on_fuse(
        "a_log_resized_at_startup_reaches_walsync_and_a_wiped_node_keeps_every_commit",
    ) {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let pageserver = Service::start("pageserver-lite", &root.path().join("pageserver")).unwrap();
    let walsync = Service::start("walsync", &root.path().join("walsync")).unwrap();
    let fuse = mount(root.path(), "a", &pageserver, &walsync);
    install_db(&fuse.mountpoint, SMALL).unwrap();
    let db = MariaDb::start(&fuse.mountpoint, SMALL).unwrap();
    bank::create(&db).unwrap();
    let workload = Workload::start(&db.socket, 2, 0);
    workload.wait_for_acked(30, Duration::from_secs(60)).unwrap();
    let mut seen = workload.stop();
    assert!(seen.errors.is_empty(), "{:?}", seen.errors);
    wait_shipped(&db, &walsync);
    let before = geometry_history(&walsync);
    let small = before
        .last()
        .expect("the log's geometry is recorded")
        .geometry
        .clone();
    assert_eq!(small.file_size, 16 * MIB);

    // Restarted with a larger log: the server resizes it.
    db.shutdown().unwrap();
    let db = MariaDb::start(&fuse.mountpoint, LARGE).unwrap();
    assert!(
        db.error_log()
            .contains("Resizing redo log from 16.000MiB to 32.000MiB"),
        "{}",
        db.error_log_tail(20)
    );
    let log = std::fs::metadata(fuse.mountpoint.join("ib_logfile0")).unwrap();
    assert_eq!(log.len(), 32 * MIB);
    assert!(!fuse.mountpoint.join("ib_logfile101").exists());
    let workload = Workload::start(&db.socket, 2, 1_000_000);
    workload.wait_for_acked(30, Duration::from_secs(60)).unwrap();
    wait_shipped(&db, &walsync);

    // walsync has the new geometry, after the old one.
    let after = geometry_history(&walsync);
    let large = after.last().unwrap().geometry.clone();
    assert_eq!(large.file_size, 32 * MIB, "{after:?}");
    assert!(large.first_lsn > small.first_lsn, "{after:?}");
    assert!(
        after.iter().any(|g| g.geometry == small),
        "the old geometry stays in the history: {after:?}"
    );

    // The node dies mid-stream and is wiped; a fresh node recovers from walsync's new log.
    let crash = Instant::now();
    db.kill();
    fuse.kill();
    let report = workload.stop();
    report.no_errors_before(crash).unwrap();
    seen.merge(report);
    std::fs::remove_dir_all(root.path().join("a")).unwrap();
    let fuse = mount(root.path(), "b", &pageserver, &walsync);
    assert!(fuse.log_text().contains("fresh node"), "{}", fuse.log_text());
    let db = MariaDb::start(&fuse.mountpoint, LARGE).unwrap();
    assert!(
        !db.error_log().contains("Resizing redo log"),
        "the fresh node's log does not have the new size: {}",
        db.error_log_tail(20)
    );
    bank::verify(&db, &seen).unwrap();
    bank::transfer(&db.socket, 10_000_000).unwrap();
    wait_shipped(&db, &walsync);
    db.shutdown().unwrap();
    fuse.unmount().unwrap();
}

/// Waits for the server's note that an online resize finished.
fn wait_resized(db: &MariaDb, note: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !db.error_log().contains(note) {
        assert!(
            Instant::now() < deadline,
            "no {note:?} in the error log:\n{}",
            db.error_log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_log_resized_online_keeps_shipping_and_a_wiped_node_keeps_every_commit() {
    if !prereq::require_mariadb_on_fuse(
        "a_log_resized_online_keeps_shipping_and_a_wiped_node_keeps_every_commit",
    ) {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let pageserver = Service::start("pageserver-lite", &root.path().join("pageserver")).unwrap();
    let walsync = Service::start("walsync", &root.path().join("walsync")).unwrap();
    let fuse = mount(root.path(), "a", &pageserver, &walsync);
    install_db(&fuse.mountpoint, SMALL).unwrap();
    let db = MariaDb::start(&fuse.mountpoint, SMALL).unwrap();
    bank::create(&db).unwrap();
    let workload = Workload::start(&db.socket, 2, 0);
    workload.wait_for_acked(30, Duration::from_secs(60)).unwrap();

    // Resized while the workload runs: InnoDB writes both logs until a checkpoint, then renames
    // ib_logfile101 over ib_logfile0.
    db.sql(&format!("SET GLOBAL innodb_log_file_size = {}", 32 * MIB))
        .unwrap();
    wait_resized(&db, "Resized log to 32.000MiB");
    let acked = workload.acked();
    workload
        .wait_for_acked(acked + 30, Duration::from_secs(60))
        .unwrap();
    // Every commit acknowledged after the resize is in walsync too.
    wait_shipped(&db, &walsync);
    let geometry = geometry_history(&walsync).last().unwrap().geometry.clone();
    assert_eq!(geometry.file_size, 32 * MIB);

    let crash = Instant::now();
    db.kill();
    fuse.kill();
    let report = workload.stop();
    report.no_errors_before(crash).unwrap();
    std::fs::remove_dir_all(root.path().join("a")).unwrap();
    let fuse = mount(root.path(), "b", &pageserver, &walsync);
    let db = MariaDb::start(&fuse.mountpoint, LARGE).unwrap();
    bank::verify(&db, &report).unwrap();
    db.shutdown().unwrap();
    fuse.unmount().unwrap();
}
