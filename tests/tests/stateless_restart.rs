//! The point of the project: a compute node's disk is only a cache. Kill mariadbd and fuse-ibd in
//! the middle of a workload, delete the node's whole cache, mount a fresh node on empty
//! directories: MariaDB's own crash recovery brings back every committed transaction.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ibd_e2e::{install_db, prereq, FuseIbd, MariaDb, Service};

const SERVER_ARGS: &[&str] = &["--innodb-flush-neighbors=0", "--innodb-log-file-size=16M"];
const ACCOUNTS: i64 = 100;
const BALANCE: i64 = 1000;

fn mount(root: &std::path::Path, node: &str, pageserver: &Service, walsync: &Service) -> FuseIbd {
    let (mnt, cache) = (root.join(node).join("datadir"), root.join(node).join("cache"));
    let args = [
        "--pageserver",
        &pageserver.url,
        "--walsync",
        &walsync.url,
        "--timeline",
        "main",
    ];
    FuseIbd::mount_with(&mnt, &cache, &args).unwrap()
}

/// Every committed transfer also inserts one row into `bank.journal`, in the same transaction.
fn transfer(socket: &std::path::Path, i: u64) -> bool {
    let (from, to, amount) = (
        i % ACCOUNTS as u64 + 1,
        (i * 37 + 11) % ACCOUNTS as u64 + 1,
        i % 50 + 1,
    );
    std::process::Command::new("mariadb")
        .arg(format!("--socket={}", socket.display()))
        .args(["-uroot", "-e"])
        .arg(format!(
            "START TRANSACTION;
             UPDATE bank.accounts SET balance = balance - {amount} WHERE id = {from};
             UPDATE bank.accounts SET balance = balance + {amount} WHERE id = {to};
             INSERT INTO bank.journal VALUES ({i});
             COMMIT;"
        ))
        .output()
        .is_ok_and(|o| o.status.success())
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
    db.sql(&format!(
        "CREATE DATABASE bank; CREATE DATABASE shop;
         CREATE TABLE bank.accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB;
         INSERT INTO bank.accounts SELECT seq, {BALANCE} FROM seq_1_to_{ACCOUNTS};
         CREATE TABLE bank.journal (transfer BIGINT PRIMARY KEY) ENGINE=InnoDB;
         CREATE TABLE shop.items (id INT PRIMARY KEY, name VARCHAR(64), note TEXT) ENGINE=InnoDB;
         INSERT INTO shop.items SELECT seq, CONCAT('item-', seq), REPEAT('n', seq % 500) FROM seq_1_to_30000;
         CREATE USER app@localhost IDENTIFIED BY 'secret'; GRANT SELECT ON shop.* TO app@localhost;"
    ))
    .unwrap();
    let items_checksum = db.sql("CHECKSUM TABLE shop.items").unwrap();

    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let workload = {
        let (socket, acked, stop) = (db.socket.clone(), acked.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && transfer(&socket, i) {
                i += 1;
                acked.store(i, Ordering::SeqCst);
            }
        })
    };
    while acked.load(Ordering::SeqCst) < 60 {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Crash in the middle of the stream: no shutdown, no unmount, no flush.
    let acked_before_kill = acked.load(Ordering::SeqCst);
    db.kill();
    fuse_a.kill();
    stop.store(true, Ordering::Relaxed);
    workload.join().unwrap();
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
    assert!(
        db.error_log().contains("Starting crash recovery"),
        "{}",
        db.error_log_tail(30)
    );
    let total = db.value("SELECT SUM(balance) FROM bank.accounts").unwrap();
    assert_eq!(
        total,
        (ACCOUNTS * BALANCE).to_string(),
        "money was created or destroyed"
    );
    let journal: u64 = db
        .value("SELECT COUNT(*) FROM bank.journal")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        journal >= acked_before_kill,
        "{journal} transfers survived, {acked_before_kill} were acknowledged"
    );
    assert!(
        journal <= acked.load(Ordering::SeqCst) + 1,
        "at most the one in flight is extra"
    );
    assert_eq!(db.sql("CHECKSUM TABLE shop.items").unwrap(), items_checksum);
    for table in ["bank.accounts", "bank.journal", "shop.items"] {
        let check = db.sql(&format!("CHECK TABLE {table}")).unwrap();
        assert!(check.ends_with("OK"), "{check}");
    }
    // Non-InnoDB state (Aria system tables: users and grants) came back too.
    assert!(db
        .sql("SHOW GRANTS FOR app@localhost")
        .unwrap()
        .contains("SELECT ON `shop`.*"));
    // And the node keeps working.
    assert!(transfer(&db.socket, 1_000_000));
    db.shutdown().unwrap();
    fuse_b.unmount().unwrap();
}
