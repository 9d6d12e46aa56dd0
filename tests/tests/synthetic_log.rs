//! A synthetic `ib_logfile0` built by `ibd-format` is accepted by a real `mariadbd`, whose own
//! recovery replays it: the building block of fresh-node mounts, branches and PITR.

use ibd_e2e::{copy_dir, install_db, prereq, MariaDb};
use ibd_format::redo::{LogFile, SyntheticLog};

const LOG_SIZE_ARG: &str = "--innodb-log-file-size=4M";

/// Table contents that must survive: row count and CHECKSUM TABLE.
fn fingerprint(db: &MariaDb) -> (String, String) {
    let rows = db.value("SELECT COUNT(*) FROM w.t").unwrap();
    let checksum = db.sql("CHECKSUM TABLE w.t").unwrap();
    (rows, checksum)
}

fn crashed_datadir(root: &std::path::Path) -> std::path::PathBuf {
    let datadir = root.join("crashed");
    install_db(&datadir, &[LOG_SIZE_ARG]).unwrap();
    let db = MariaDb::start(&datadir, &[LOG_SIZE_ARG]).unwrap();
    db.sql(
        "CREATE DATABASE w; CREATE TABLE w.t (id INT PRIMARY KEY, v VARCHAR(100), n INT) ENGINE=InnoDB;
         INSERT INTO w.t SELECT seq, CONCAT('row-', seq), seq % 97 FROM seq_1_to_20000;",
    )
    .unwrap();
    for i in 0..20 {
        db.sql(&format!("UPDATE w.t SET n = n + 1 WHERE id % 20 = {i}"))
            .unwrap();
    }
    // Crash right after the updates: their redo is after the last checkpoint.
    db.kill();
    datadir
}

#[test]
fn synthetic_log_with_checkpoint_wal_is_replayed_by_mariadbd() {
    if !prereq::require_mariadb("synthetic_log_with_checkpoint_wal_is_replayed_by_mariadbd") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let crashed = crashed_datadir(root.path());

    // What the server recovers from its own log.
    let control_dir = root.path().join("control");
    copy_dir(&crashed, &control_dir).unwrap();
    let control = MariaDb::start(&control_dir, &[LOG_SIZE_ARG]).unwrap();
    let expected = fingerprint(&control);
    let control_end = control
        .reported_end_of_log()
        .expect("the server reports the end of the log");
    control.shutdown().unwrap();

    // The same datadir with a log rebuilt from just [checkpoint, end): header, one checkpoint block,
    // the WAL at its offsets, zeros elsewhere.
    let synth_dir = root.path().join("synthetic");
    copy_dir(&crashed, &synth_dir).unwrap();
    let original = std::fs::read(synth_dir.join("ib_logfile0")).unwrap();
    let log = LogFile::parse(&original).unwrap();
    let scan = log.recovery_scan().unwrap();
    assert_eq!(
        scan.end_lsn, control_end,
        "the scanner agrees with the server on the end of the log"
    );
    let cp = scan.checkpoint;
    let wal = log.logical(cp.checkpoint_lsn, scan.end_lsn - cp.checkpoint_lsn);
    let synthetic = SyntheticLog {
        geometry: log.geometry(),
        creator: "fuse-ibd synthetic",
        checkpoint: cp,
        wal: wal.into(),
    }
    .build()
    .unwrap();
    assert_ne!(
        synthetic, original,
        "stale bytes and the other checkpoint block are gone"
    );
    std::fs::write(synth_dir.join("ib_logfile0"), &synthetic).unwrap();

    let db = MariaDb::start(&synth_dir, &[LOG_SIZE_ARG]).unwrap();
    let log_text = db.error_log();
    assert!(
        log_text.contains(&format!(
            "Starting crash recovery from checkpoint LSN={}",
            cp.checkpoint_lsn
        )),
        "recovery ran from our checkpoint:\n{}",
        db.error_log_tail(30)
    );
    assert_eq!(db.reported_end_of_log(), Some(scan.end_lsn));
    assert_eq!(fingerprint(&db), expected);
    let check = db.sql("CHECK TABLE w.t").unwrap();
    assert!(check.ends_with("OK"), "CHECK TABLE: {check}");
    db.shutdown().unwrap();
}

#[test]
fn empty_synthetic_log_starts_a_cleanly_shut_down_datadir() {
    if !prereq::require_mariadb("empty_synthetic_log_starts_a_cleanly_shut_down_datadir") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let datadir = root.path().join("clean");
    install_db(&datadir, &[LOG_SIZE_ARG]).unwrap();
    let db = MariaDb::start(&datadir, &[LOG_SIZE_ARG]).unwrap();
    db.sql(
        "CREATE DATABASE w; CREATE TABLE w.t (id INT PRIMARY KEY, v VARCHAR(100), n INT) ENGINE=InnoDB;
         INSERT INTO w.t SELECT seq, CONCAT('row-', seq), seq FROM seq_1_to_5000;",
    )
    .unwrap();
    let expected = fingerprint(&db);
    db.shutdown().unwrap();

    // After a clean shutdown every page is at or before the checkpoint: a log holding nothing but a
    // FILE_CHECKPOINT at that LSN is all a fresh node needs.
    let original = std::fs::read(datadir.join("ib_logfile0")).unwrap();
    let cp = LogFile::parse(&original).unwrap().latest_checkpoint().unwrap().1;
    assert_eq!(
        cp.checkpoint_lsn, cp.end_lsn,
        "a clean shutdown leaves checkpoint == end"
    );
    let synthetic = SyntheticLog::empty_at(cp.checkpoint_lsn, original.len() as u64, "fuse-ibd fresh")
        .unwrap()
        .build()
        .unwrap();
    std::fs::write(datadir.join("ib_logfile0"), synthetic).unwrap();

    let db = MariaDb::start(&datadir, &[LOG_SIZE_ARG]).unwrap();
    assert_eq!(
        db.reported_end_of_log(),
        Some(cp.checkpoint_lsn + 16),
        "{}",
        db.error_log_tail(20)
    );
    assert_eq!(fingerprint(&db), expected);
    db.sql("INSERT INTO w.t VALUES (100000, 'after', 1)").unwrap();
    db.shutdown().unwrap();
}
