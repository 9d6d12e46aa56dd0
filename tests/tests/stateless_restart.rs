//! The point of the project: a compute node's disk is only a cache. Kill mariadbd and fuse-ibd in
//! the middle of a workload, delete the node's whole cache, mount a fresh node on empty
//! directories: MariaDB's own crash recovery brings back every committed transaction. The milder
//! stops (only mariadbd dies; both die but the cache is kept; a clean shutdown) lose nothing
//! either.

use std::path::Path;
use std::time::{Duration, Instant};

use ibd_e2e::bank::{self, Workload};
use ibd_e2e::{install_db, prereq, remote, FuseIbd, MariaDb, Service};

const SERVER_ARGS: &[&str] = &["--innodb-flush-neighbors=0", "--innodb-log-file-size=16M"];
const TIMELINE: &str = "main";

fn mount(root: &Path, node: &str, pageserver: &Service, walsync: &Service) -> FuseIbd {
    FuseIbd::mount_node(root, node, pageserver, walsync, TIMELINE, &[]).unwrap()
}

fn assert_recovered(db: &MariaDb, crash: bool) {
    assert_eq!(
        db.error_log().contains("Starting crash recovery"),
        crash,
        "crash recovery expected: {crash}\n{}",
        db.error_log_tail(30)
    );
}

#[test]
fn a_wiped_node_comes_back_with_every_committed_transaction() {
    if !prereq::require_mariadb_on_fuse("a_wiped_node_comes_back_with_every_committed_transaction") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let pageserver = Service::start("pageserver-lite", &root.path().join("pageserver")).unwrap();
    let walsync = Service::start("walsync", &root.path().join("walsync")).unwrap();

    // Node A: install, load, then a stream of transfers.
    let fuse_a = mount(root.path(), "a", &pageserver, &walsync);
    install_db(&fuse_a.mountpoint, SERVER_ARGS).unwrap();
    let db = MariaDb::start(&fuse_a.mountpoint, SERVER_ARGS).unwrap();
    bank::create(&db).unwrap();
    db.sql(
        "CREATE DATABASE shop;
         CREATE TABLE shop.items (id INT PRIMARY KEY, name VARCHAR(64), note TEXT) ENGINE=InnoDB;
         INSERT INTO shop.items SELECT seq, CONCAT('item-', seq), REPEAT('n', seq % 500) FROM seq_1_to_30000;
         CREATE USER app@localhost IDENTIFIED BY 'secret'; GRANT SELECT ON shop.* TO app@localhost;",
    )
    .unwrap();
    let items_checksum = db.sql("CHECKSUM TABLE shop.items").unwrap();

    let workload = Workload::start(&db.socket, 2, 0);
    workload.wait_for_acked(60, Duration::from_secs(60)).unwrap();
    // Crash in the middle of the stream: no shutdown, no unmount, no flush.
    let crash = Instant::now();
    db.kill();
    fuse_a.kill();
    let report = workload.stop();
    report.no_errors_before(crash).unwrap();
    std::fs::remove_dir_all(root.path().join("a")).unwrap();

    // Node B: empty disk, same timeline, a mount point owned by the server's user (as an
    // operator prepares it for a mariadbd running as `mysql`).
    let (mysql_uid, mysql_gid) = (1234, 2345);
    let mnt_b = root.path().join("b").join("datadir");
    std::fs::create_dir_all(&mnt_b).unwrap();
    std::os::unix::fs::chown(&mnt_b, Some(mysql_uid), Some(mysql_gid)).unwrap();
    let fuse_b = mount(root.path(), "b", &pageserver, &walsync);
    assert!(fuse_b.log_text().contains("fresh node"), "{}", fuse_b.log_text());
    for file in [
        "",
        "ibdata1",
        "ib_logfile0",
        "mysql/global_priv.MAD",
        "bank/accounts.ibd",
    ] {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(mnt_b.join(file)).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (mysql_uid, mysql_gid),
            "{file:?} belongs to the mount point's owner"
        );
    }
    let db = MariaDb::start(&fuse_b.mountpoint, SERVER_ARGS).unwrap();
    assert_recovered(&db, true);
    bank::verify(&db, &report).unwrap();
    assert_eq!(db.sql("CHECKSUM TABLE shop.items").unwrap(), items_checksum);
    let check = db.sql("CHECK TABLE shop.items").unwrap();
    assert!(check.ends_with("OK"), "{check}");
    // Non-InnoDB state (Aria system tables: users and grants) came back too.
    assert!(db
        .sql("SHOW GRANTS FOR app@localhost")
        .unwrap()
        .contains("SELECT ON `shop`.*"));
    // And the node keeps working.
    bank::transfer(&db.socket, 1_000_000).unwrap();
    db.shutdown().unwrap();
    fuse_b.unmount().unwrap();
}

#[test]
fn crashes_and_clean_restarts_with_the_cache_kept_lose_no_commit() {
    if !prereq::require_mariadb_on_fuse("crashes_and_clean_restarts_with_the_cache_kept_lose_no_commit") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let pageserver = Service::start("pageserver-lite", &root.path().join("pageserver")).unwrap();
    let walsync = Service::start("walsync", &root.path().join("walsync")).unwrap();
    let fuse = mount(root.path(), "a", &pageserver, &walsync);
    install_db(&fuse.mountpoint, SERVER_ARGS).unwrap();
    let db = MariaDb::start(&fuse.mountpoint, SERVER_ARGS).unwrap();
    bank::create(&db).unwrap();

    // 1. Only mariadbd dies; the mount and its cache stay.
    let workload = Workload::start(&db.socket, 2, 0);
    workload.wait_for_acked(40, Duration::from_secs(60)).unwrap();
    let crash = Instant::now();
    db.kill();
    let mut seen = workload.stop();
    seen.no_errors_before(crash).unwrap();
    let db = MariaDb::start(&fuse.mountpoint, SERVER_ARGS).unwrap();
    assert_recovered(&db, true);
    bank::verify(&db, &seen).unwrap();

    // 2. mariadbd and fuse-ibd die; the cache is kept and mounted again: the unclean stop makes
    // the mount upload the cache again and ship the redo walsync may lack.
    let workload = Workload::start(&db.socket, 2, 1_000_000);
    workload.wait_for_acked(40, Duration::from_secs(60)).unwrap();
    let crash = Instant::now();
    db.kill();
    fuse.kill();
    let report = workload.stop();
    report.no_errors_before(crash).unwrap();
    seen.merge(report);
    let fuse = mount(root.path(), "a", &pageserver, &walsync);
    assert!(
        !fuse.log_text().contains("fresh node"),
        "the cache was kept: {}",
        fuse.log_text()
    );
    let db = MariaDb::start(&fuse.mountpoint, SERVER_ARGS).unwrap();
    assert_recovered(&db, true);
    bank::verify(&db, &seen).unwrap();

    // 3. A clean shutdown and unmount, then the same cache again: no recovery needed.
    let workload = Workload::start(&db.socket, 2, 2_000_000);
    workload.wait_for_acked(40, Duration::from_secs(60)).unwrap();
    let report = workload.stop();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    seen.merge(report);
    db.shutdown().unwrap();
    fuse.unmount().unwrap();
    let fuse = mount(root.path(), "a", &pageserver, &walsync);
    let db = MariaDb::start(&fuse.mountpoint, SERVER_ARGS).unwrap();
    assert_recovered(&db, false);
    bank::verify(&db, &seen).unwrap();
    assert_eq!(fuse.status("io_errors"), Some(0));

    // 4. After a clean stop the pageserver holds exactly the node's files, and a fresh node
    // started from the timeline alone has everything.
    db.shutdown().unwrap();
    let files = remote::assert_pageserver_matches(&pageserver.url, TIMELINE, &fuse.mountpoint).unwrap();
    assert!(files >= 10, "only {files} files on the pageserver");
    fuse.unmount().unwrap();
    std::fs::remove_dir_all(root.path().join("a")).unwrap();
    let fuse = mount(root.path(), "b", &pageserver, &walsync);
    let db = MariaDb::start(&fuse.mountpoint, SERVER_ARGS).unwrap();
    bank::verify(&db, &seen).unwrap();
    db.shutdown().unwrap();
    fuse.unmount().unwrap();
}
