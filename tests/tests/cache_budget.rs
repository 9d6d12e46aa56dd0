//! The local cache is a cache: with a budget far smaller than the data, fuse-ibd evicts blocks the
//! pageserver has durably, fetches them back when MariaDB reads them (with read-ahead for scans),
//! never drops a block it has not uploaded (invariant 3), and a partly evicted cache survives a
//! clean daemon restart and a SIGKILL of the whole node.

use std::time::{Duration, Instant};

use ibd_e2e::{install_db, prereq, FuseIbd, MariaDb, Service};

const BUDGET: u64 = 4 << 20;
/// Room over the budget: blocks written but not yet durable cannot be evicted, and the evictor
/// runs a moment after the cache outgrows its budget.
const SLACK: u64 = 4 << 20;
const SERVER_ARGS: &[&str] = &[
    "--innodb-flush-neighbors=0",
    "--innodb-log-file-size=16M",
    "--innodb-buffer-pool-size=6M",
    "--innodb-doublewrite=0",
];

fn mount(root: &std::path::Path, pageserver: &Service, walsync: &Service) -> FuseIbd {
    FuseIbd::mount_node(
        root,
        "node",
        pageserver,
        walsync,
        "main",
        &["--cache-size", "4MiB"],
    )
    .unwrap()
}

/// Waits for the evictor to bring the cache within budget (plus slack).
fn assert_within_budget(fuse: &FuseIbd) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let resident = fuse.status("cache_resident_bytes").unwrap();
        if resident <= BUDGET + SLACK {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "cache holds {resident} bytes, budget {BUDGET}:\n{}",
            fuse.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Backing-tree bytes actually allocated for the table's file (holes do not count).
fn allocated_bytes(fuse: &FuseIbd, rel: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(fuse.cache_dir.join("tree").join(rel))
        .unwrap()
        .blocks()
        * 512
}

#[test]
fn a_small_cache_evicts_durable_blocks_and_serves_every_page_back() {
    if !prereq::require_mariadb_on_fuse("a_small_cache_evicts_durable_blocks_and_serves_every_page_back") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let pageserver = Service::start("pageserver-lite", &root.path().join("pageserver")).unwrap();
    let walsync = Service::start("walsync", &root.path().join("walsync")).unwrap();
    let fuse = mount(root.path(), &pageserver, &walsync);
    install_db(&fuse.mountpoint, SERVER_ARGS).unwrap();
    let db = MariaDb::start(&fuse.mountpoint, SERVER_ARGS).unwrap();
    // ~24 MiB of rows: six times the cache, four times the buffer pool.
    db.sql(
        "CREATE DATABASE c; CREATE TABLE c.t (id INT PRIMARY KEY, pad CHAR(255)) ENGINE=InnoDB;
         INSERT INTO c.t SELECT seq, SHA2(seq, 256) FROM seq_1_to_60000;",
    )
    .unwrap();
    let checksum = db.sql("CHECKSUM TABLE c.t").unwrap();
    // The shutdown fsyncs everything: all blocks become durable, hence evictable.
    db.shutdown().unwrap();
    assert_within_budget(&fuse);
    let evictions = fuse.status("cache_evictions").unwrap();
    assert!(evictions > 0, "nothing was evicted:\n{}", fuse.log_text());
    assert!(
        allocated_bytes(&fuse, "c/t.ibd") < 16 << 20,
        "evicted blocks are holes in the backing file"
    );

    // A restarted server (cold buffer pool) reads the table back, much of it from the pageserver.
    let fetched_before = fuse.status("remote_fetched_pages").unwrap();
    let fetches_before = fuse.status("remote_fetches").unwrap();
    let db = MariaDb::start(&fuse.mountpoint, SERVER_ARGS).unwrap();
    assert_eq!(db.sql("CHECKSUM TABLE c.t").unwrap(), checksum);
    let fetched = fuse.status("remote_fetched_pages").unwrap() - fetched_before;
    let fetches = fuse.status("remote_fetches").unwrap() - fetches_before;
    assert!(
        fetched > 200,
        "only {fetched} pages came back from the pageserver"
    );
    assert!(
        fetches * 2 < fetched,
        "a table scan should fetch ahead in batches: {fetched} pages in {fetches} requests"
    );
    assert!(fuse.status("cache_misses").unwrap() > 0);
    eprintln!("evicted {evictions} blocks; the cold scan fetched {fetched} pages in {fetches} requests");
    assert_eq!(fuse.status("io_errors"), Some(0));
    db.shutdown().unwrap();
    assert_within_budget(&fuse);

    // A clean daemon restart keeps the partly evicted cache: holes are fetched, not trusted.
    fuse.unmount().unwrap();
    assert!(root.path().join("node/cache/absent-blocks").exists());
    let fuse = mount(root.path(), &pageserver, &walsync);
    let db = MariaDb::start(&fuse.mountpoint, SERVER_ARGS).unwrap();
    assert_eq!(db.sql("CHECKSUM TABLE c.t").unwrap(), checksum);

    // Writes over a small cache, then the whole node is SIGKILLed: the cache is reused as it is
    // (dirty blocks re-uploaded, holes fetched) and recovery finds every committed row.
    db.sql("UPDATE c.t SET pad = CONCAT('v2-', id) WHERE id % 3 = 0")
        .unwrap();
    let expected = db.sql("CHECKSUM TABLE c.t").unwrap();
    db.kill();
    fuse.kill();
    let fuse = mount(root.path(), &pageserver, &walsync);
    let db = MariaDb::start(&fuse.mountpoint, SERVER_ARGS).unwrap();
    assert_eq!(db.sql("CHECKSUM TABLE c.t").unwrap(), expected);
    let check = db.sql("CHECK TABLE c.t").unwrap();
    assert!(check.contains("OK"), "{check}");
    assert_eq!(fuse.status("io_errors"), Some(0), "{}", fuse.log_text());
    db.shutdown().unwrap();
    fuse.unmount().unwrap();
}
