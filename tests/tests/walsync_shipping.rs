//! fuse-ibd ships MariaDB's redo to a real walsync, and an fsync of the log returns only once
//! walsync has it durable (DESIGN.md invariant 1).

use std::time::{Duration, Instant};

use ibd_api::walsync::WalsyncClient;
use ibd_e2e::{install_db, prereq, FuseIbd, MariaDb, Service};
use ibd_format::redo::LogFile;

const SERVER_ARGS: &[&str] = &["--innodb-flush-neighbors=0", "--innodb-log-file-size=16M"];
const TIMELINE: &str = "main";

/// Waits until the mount's redo tail, walsync's durable LSN and the server's flushed LSN agree.
fn quiesced_lsn(db: &MariaDb, fuse: &FuseIbd) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let flushed = db.flushed_lsn().unwrap();
        let (tail, durable) = (fuse.status("redo_complete_lsn"), fuse.status("wal_durable_lsn"));
        if tail == Some(flushed) && durable == Some(flushed) {
            return flushed;
        }
        assert!(
            Instant::now() < deadline,
            "server flushed {flushed}, tail {tail:?}, walsync durable {durable:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn redo_reaches_walsync_byte_for_byte_and_log_fsync_waits_for_it() {
    if !prereq::require_mariadb_on_fuse("redo_reaches_walsync_byte_for_byte_and_log_fsync_waits_for_it") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let walsync = Service::start("walsync", &root.path().join("walsync")).unwrap();
    let (mnt, cache) = (root.path().join("datadir"), root.path().join("cache"));
    let fuse =
        FuseIbd::mount_with(&mnt, &cache, &["--walsync", &walsync.url, "--timeline", TIMELINE]).unwrap();
    install_db(&mnt, SERVER_ARGS).unwrap();
    let db = MariaDb::start(&mnt, SERVER_ARGS).unwrap();
    db.sql(
        "CREATE DATABASE w; CREATE TABLE w.t (id INT PRIMARY KEY, v VARCHAR(100)) ENGINE=InnoDB;
         INSERT INTO w.t SELECT seq, CONCAT('row-', seq) FROM seq_1_to_5000;",
    )
    .unwrap();
    let lsn = quiesced_lsn(&db, &fuse);

    // walsync holds exactly the bytes of the log, from the first record to the flushed LSN.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = WalsyncClient::new(&walsync.url).unwrap();
    let status = runtime.block_on(client.status(TIMELINE)).unwrap();
    assert_eq!(status.durable_lsn, Some(lsn));
    let start = status.wal_start_lsn.expect("the timeline has WAL");
    let shipped = runtime.block_on(client.read_wal(TIMELINE, start, lsn)).unwrap();
    let log_bytes = std::fs::read(mnt.join("ib_logfile0")).unwrap();
    let log = LogFile::parse(&log_bytes).unwrap();
    assert!(
        lsn - log.geometry().first_lsn < log.geometry().capacity(),
        "the log has not wrapped"
    );
    assert_eq!(&shipped[..], &log.logical(start, lsn - start)[..]);
    let geometry = status.geometry.expect("the log geometry was recorded").geometry;
    assert_eq!(
        (geometry.first_lsn, geometry.file_size),
        (log.geometry().first_lsn, log.geometry().file_size)
    );

    // Invariant 1: while walsync cannot answer, a commit (whose log fdatasync waits) does not return.
    walsync.signal(libc::SIGSTOP);
    let commit = {
        let socket = db.socket.clone();
        std::thread::spawn(move || {
            let out = std::process::Command::new("mariadb")
                .arg(format!("--socket={}", socket.display()))
                .args([
                    "-uroot",
                    "-e",
                    "INSERT INTO w.t VALUES (100000, 'committed while walsync was frozen')",
                ])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            Instant::now()
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !commit.is_finished(),
        "COMMIT returned before walsync had the redo durable"
    );
    let thawed = Instant::now();
    walsync.signal(libc::SIGCONT);
    let returned = commit.join().unwrap();
    assert!(returned >= thawed);
    let lsn = quiesced_lsn(&db, &fuse);
    assert_eq!(
        runtime.block_on(client.status(TIMELINE)).unwrap().durable_lsn,
        Some(lsn)
    );
    assert_eq!(db.value("SELECT COUNT(*) FROM w.t").unwrap(), "5001");

    db.shutdown().unwrap();
    fuse.unmount().unwrap();
}

#[test]
fn an_existing_log_is_adopted_by_an_empty_timeline_from_its_checkpoint() {
    if !prereq::require_mariadb_on_fuse("an_existing_log_is_adopted_by_an_empty_timeline_from_its_checkpoint")
    {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let (mnt, cache) = (root.path().join("datadir"), root.path().join("cache"));
    // A datadir that lived on a local-only mount...
    let fuse = FuseIbd::mount(&mnt, &cache).unwrap();
    install_db(&mnt, SERVER_ARGS).unwrap();
    let db = MariaDb::start(&mnt, SERVER_ARGS).unwrap();
    db.sql("CREATE DATABASE w; CREATE TABLE w.t (id INT PRIMARY KEY) ENGINE=InnoDB; INSERT INTO w.t SELECT seq FROM seq_1_to_100;")
        .unwrap();
    db.shutdown().unwrap();
    fuse.unmount().unwrap();
    let log = std::fs::read(cache.join("tree/ib_logfile0")).unwrap();
    let checkpoint = LogFile::parse(&log).unwrap().latest_checkpoint().unwrap().1;

    // ...is mounted onto a new timeline: the WAL from its checkpoint on goes to walsync.
    let walsync = Service::start("walsync", &root.path().join("walsync")).unwrap();
    let fuse =
        FuseIbd::mount_with(&mnt, &cache, &["--walsync", &walsync.url, "--timeline", TIMELINE]).unwrap();
    let db = MariaDb::start(&mnt, SERVER_ARGS).unwrap();
    db.sql("INSERT INTO w.t VALUES (101)").unwrap();
    let lsn = quiesced_lsn(&db, &fuse);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = WalsyncClient::new(&walsync.url).unwrap();
    let status = runtime.block_on(client.status(TIMELINE)).unwrap();
    assert_eq!(
        status.wal_start_lsn,
        Some(checkpoint.checkpoint_lsn),
        "shipping starts at the adopted checkpoint"
    );
    assert_eq!(status.durable_lsn, Some(lsn));
    let checkpoints = runtime
        .block_on(client.checkpoints(TIMELINE))
        .unwrap()
        .checkpoints;
    assert!(
        checkpoints
            .iter()
            .any(|c| c.checkpoint.checkpoint_lsn == checkpoint.checkpoint_lsn),
        "{checkpoints:?}"
    );
    db.shutdown().unwrap();
    fuse.unmount().unwrap();
}
