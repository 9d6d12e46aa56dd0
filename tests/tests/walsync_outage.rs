//! walsync crashes under load and comes back 5 s later on the same address: every commit waits
//! for it (DESIGN.md invariants 1 and 6: block and retry, never fail at once), the clients see no
//! error, and nothing acknowledged is lost, even by a node that is then wiped.

use std::path::Path;
use std::time::{Duration, Instant};

use ibd_api::walsync::WalsyncClient;
use ibd_e2e::bank::{self, Workload};
use ibd_e2e::{install_db, prereq, remote, FuseIbd, MariaDb, Service};

const SERVER_ARGS: &[&str] = &["--innodb-flush-neighbors=0", "--innodb-log-file-size=16M"];
const TIMELINE: &str = "main";
const OUTAGE: Duration = Duration::from_secs(5);

fn mount(root: &Path, node: &str, pageserver: &Service, walsync: &Service) -> FuseIbd {
    FuseIbd::mount_node(root, node, pageserver, walsync, TIMELINE, &[]).unwrap()
}

#[test]
fn commits_wait_through_a_walsync_crash_and_nothing_acknowledged_is_lost() {
    if !prereq::require_mariadb_on_fuse(
        "commits_wait_through_a_walsync_crash_and_nothing_acknowledged_is_lost",
    ) {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let mut pageserver = Service::start("pageserver-lite", &root.path().join("pageserver")).unwrap();
    let mut walsync = Service::start("walsync", &root.path().join("walsync")).unwrap();
    let fuse = mount(root.path(), "a", &pageserver, &walsync);
    install_db(&fuse.mountpoint, SERVER_ARGS).unwrap();
    let db = MariaDb::start(&fuse.mountpoint, SERVER_ARGS).unwrap();
    bank::create(&db).unwrap();

    let workload = Workload::start(&db.socket, 3, 0);
    workload.wait_for_acked(30, Duration::from_secs(60)).unwrap();

    // walsync dies (SIGKILL) with commits in flight and stays down for OUTAGE.
    let killed = Instant::now();
    walsync.kill();
    std::thread::sleep(Duration::from_secs(1));
    let durable_during = fuse.status("wal_durable_lsn");
    std::thread::sleep(OUTAGE - Duration::from_secs(1));
    assert_eq!(
        fuse.status("wal_durable_lsn"),
        durable_during,
        "walsync's durable LSN moved while it was down"
    );
    let restarted = Instant::now();
    walsync.restart().unwrap();
    let acked_at_restart = workload.acked();
    workload
        .wait_for_acked(acked_at_restart + 30, Duration::from_secs(60))
        .unwrap();

    // Then the node dies mid-stream: mariadbd and fuse-ibd SIGKILLed, and both services too
    // (they must come back from their disks alone), and the node's disk is wiped.
    let crash = Instant::now();
    db.kill();
    fuse.kill();
    let report = workload.stop();
    pageserver.kill();
    walsync.kill();
    pageserver.restart().unwrap();
    walsync.restart().unwrap();
    std::fs::remove_dir_all(root.path().join("a")).unwrap();

    // The clients saw no error until the crash, and the outage stalled every commit: none
    // returned while walsync was down (a second of grace for those already durable), and
    // at least one waited for nearly the whole outage, returning only once walsync was back.
    report.no_errors_before(crash).unwrap();
    assert_eq!(
        report.finished_between(killed + Duration::from_secs(1), restarted),
        0,
        "commits returned while walsync was down"
    );
    let slowest = report.slowest().unwrap();
    assert!(
        slowest.took() >= OUTAGE - Duration::from_secs(1) && slowest.finished >= restarted,
        "no commit waited for walsync: the slowest took {:?}",
        slowest.took()
    );
    println!(
        "{} transfers acknowledged, the slowest took {:?}",
        report.acked.len(),
        slowest.took()
    );

    // A fresh node on an empty disk has every acknowledged transfer.
    let fuse = mount(root.path(), "b", &pageserver, &walsync);
    assert!(fuse.log_text().contains("fresh node"), "{}", fuse.log_text());
    let db = MariaDb::start(&fuse.mountpoint, SERVER_ARGS).unwrap();
    bank::verify(&db, &report).unwrap();
    // The node keeps working and walsync takes its WAL.
    bank::transfer(&db.socket, 10_000_000).unwrap();
    let flushed = db.flushed_lsn().unwrap();
    let status = remote::runtime()
        .block_on(WalsyncClient::new(&walsync.url).unwrap().status(TIMELINE))
        .unwrap();
    assert!(
        status.durable_lsn.is_some_and(|d| d >= flushed),
        "walsync durable {:?}, server flushed {flushed}",
        status.durable_lsn
    );
    assert_eq!(fuse.status("io_errors"), Some(0));
    db.shutdown().unwrap();
    fuse.unmount().unwrap();
}
