//! Stock MariaDB on a `fuse-ibd` mount: install, DDL and DML, crash and clean restarts.

use ibd_e2e::{install_db, prereq, FuseIbd, MariaDb};

const SERVER_ARGS: &[&str] = &["--innodb-flush-neighbors=0", "--innodb-log-file-size=16M"];

/// Accounts whose balances only ever move between each other: the total is an invariant.
const BANK_TOTAL: i64 = 100 * 1000;

fn workload(db: &MariaDb) {
    db.sql(
        "CREATE DATABASE shop;
         CREATE TABLE shop.items (id INT PRIMARY KEY AUTO_INCREMENT, name VARCHAR(64), price DECIMAL(10,2),
                                  note TEXT, KEY (price)) ENGINE=InnoDB;
         INSERT INTO shop.items (name, price, note)
           SELECT CONCAT('item-', seq), seq / 7, REPEAT('n', seq % 300) FROM seq_1_to_20000;
         ALTER TABLE shop.items ADD COLUMN stock INT NOT NULL DEFAULT 5, ADD KEY (stock);
         CREATE TABLE shop.tmp_rename (id INT PRIMARY KEY) ENGINE=InnoDB;
         RENAME TABLE shop.tmp_rename TO shop.renamed;
         CREATE TABLE shop.gone (id INT) ENGINE=InnoDB;
         DROP TABLE shop.gone;
         CREATE TABLE shop.aria (id INT PRIMARY KEY, v VARCHAR(10)) ENGINE=Aria;
         INSERT INTO shop.aria VALUES (1, 'a'), (2, 'b');
         CREATE TABLE shop.bank (id INT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB;
         INSERT INTO shop.bank SELECT seq, 1000 FROM seq_1_to_100;",
    )
    .unwrap();
    for i in 0..50 {
        let (from, to, amount) = (i % 100 + 1, (i * 37) % 100 + 1, i * 3 + 1);
        db.sql(&format!(
            "START TRANSACTION;
             UPDATE shop.bank SET balance = balance - {amount} WHERE id = {from};
             UPDATE shop.bank SET balance = balance + {amount} WHERE id = {to};
             COMMIT;"
        ))
        .unwrap();
    }
}

fn check_tables(db: &MariaDb) {
    for table in ["shop.items", "shop.renamed", "shop.aria", "shop.bank"] {
        let out = db.sql(&format!("CHECK TABLE {table}")).unwrap();
        assert!(
            out.lines().last().unwrap_or("").ends_with("OK"),
            "CHECK TABLE {table}: {out}"
        );
    }
    assert_eq!(
        db.value("SELECT SUM(balance) FROM shop.bank").unwrap(),
        BANK_TOTAL.to_string()
    );
}

fn fingerprint(db: &MariaDb) -> Vec<String> {
    [
        "SELECT COUNT(*) FROM shop.items",
        "CHECKSUM TABLE shop.items",
        "CHECKSUM TABLE shop.bank",
        "SHOW TABLES FROM shop",
    ]
    .iter()
    .map(|q| db.sql(q).unwrap())
    .collect()
}

/// The redo tail converges to the LSN the server has flushed (quiesced: no more log writes).
fn assert_redo_tail_matches_server(db: &MariaDb, fuse: &FuseIbd) {
    let mut last = (0, None);
    for _ in 0..50 {
        let flushed = db.flushed_lsn().unwrap();
        let tail = fuse.status("redo_complete_lsn");
        if tail == Some(flushed) {
            return;
        }
        last = (flushed, tail);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!(
        "redo tail {:?} never reached the server's flushed LSN {}",
        last.1, last.0
    );
}

#[test]
fn mariadb_runs_on_the_mount_and_survives_crash_and_clean_restarts() {
    if !prereq::require_mariadb_on_fuse("mariadb_runs_on_the_mount_and_survives_crash_and_clean_restarts") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let (mnt, cache) = (root.path().join("datadir"), root.path().join("cache"));
    let fuse = FuseIbd::mount(&mnt, &cache).unwrap();
    install_db(&mnt, SERVER_ARGS).unwrap();
    let db = MariaDb::start(&mnt, SERVER_ARGS).unwrap();
    assert_eq!(db.value("SELECT @@innodb_doublewrite").unwrap(), "0");
    workload(&db);
    check_tables(&db);
    assert_redo_tail_matches_server(&db, &fuse);
    let before = fingerprint(&db);

    // mariadbd crashes; the mount (and its cache) stays: InnoDB's recovery brings it back, and
    // finds the end of the log exactly where the mount's redo tail is.
    db.kill();
    let tail_at_crash = fuse
        .status("redo_complete_lsn")
        .expect("the mount tails the redo log");
    let db = MariaDb::start(&mnt, SERVER_ARGS).unwrap();
    assert!(
        db.error_log().contains("Starting crash recovery"),
        "{}",
        db.error_log_tail(20)
    );
    assert_eq!(db.reported_end_of_log(), Some(tail_at_crash));
    check_tables(&db);
    assert_eq!(fingerprint(&db), before);
    db.sql("INSERT INTO shop.items (name, price, note) VALUES ('after-crash', 1, 'x')")
        .unwrap();
    let before = fingerprint(&db);

    // Clean shutdown, unmount, mount the same cache again.
    db.shutdown().unwrap();
    fuse.unmount().unwrap();
    let fuse = FuseIbd::mount(&mnt, &cache).unwrap();
    let db = MariaDb::start(&mnt, SERVER_ARGS).unwrap();
    check_tables(&db);
    assert_eq!(fingerprint(&db), before);
    // Aria system tables (users, grants) came back too.
    assert_eq!(
        db.value("SELECT COUNT(*) FROM mysql.global_priv WHERE User = 'root' AND Host = 'localhost'")
            .unwrap(),
        "1"
    );

    // The status file answers from inside the datadir.
    let status = std::fs::read_to_string(mnt.join(".fuse-ibd/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("fsyncs_redo=") && l != "fsyncs_redo=0"),
        "{status}"
    );
    db.shutdown().unwrap();
    fuse.unmount().unwrap();
}
