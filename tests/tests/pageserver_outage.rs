//! The pageserver crashes under a sysbench load and comes back 5 s later on the same address:
//! fsyncs of data files (and so InnoDB's checkpoints) wait for it (DESIGN.md invariants 2 and 6:
//! block and retry, never fail at once), the workload sees no error, and afterwards the data is
//! sound, the pageserver holds exactly the node's pages, and a fresh node has the same data.

use std::path::Path;
use std::time::{Duration, Instant};

use ibd_e2e::{install_db, prereq, remote, sysbench, sysbench_stat, FuseIbd, MariaDb, Service};

const SERVER_ARGS: &[&str] = &["--innodb-flush-neighbors=0", "--innodb-log-file-size=16M"];
const TIMELINE: &str = "main";
const OUTAGE: Duration = Duration::from_secs(5);
const TABLES: &[&str] = &["sbtest.sbtest1", "sbtest.sbtest2"];
/// sysbench's own size for these tables; 2 threads: light, but every second dirties pages.
const SYSBENCH_ARGS: &[&str] = &[
    "--tables=2",
    "--table-size=5000",
    "--threads=2",
    "--rand-type=uniform",
    // Deadlocks between its threads are the application's business; any other error (I/O,
    // lost connection, lock wait timeout) fails the run.
    "--mysql-ignore-errors=1213",
];

fn mount(root: &Path, node: &str, pageserver: &Service, walsync: &Service) -> FuseIbd {
    FuseIbd::mount_node(root, node, pageserver, walsync, TIMELINE, &[]).unwrap()
}

fn checksums(db: &MariaDb) -> Vec<String> {
    TABLES
        .iter()
        .map(|t| db.sql(&format!("CHECKSUM TABLE {t}")).unwrap())
        .collect()
}

fn check_tables(db: &MariaDb) {
    for table in TABLES {
        let check = db.sql(&format!("CHECK TABLE {table}")).unwrap();
        assert!(check.lines().last().unwrap_or("").ends_with("OK"), "{check}");
    }
}

#[test]
fn data_fsyncs_wait_through_a_pageserver_crash_and_the_workload_sees_no_error() {
    if !prereq::require_mariadb_on_fuse(
        "data_fsyncs_wait_through_a_pageserver_crash_and_the_workload_sees_no_error",
    ) || !prereq::require_tools(
        "data_fsyncs_wait_through_a_pageserver_crash_and_the_workload_sees_no_error",
        &["sysbench"],
    ) {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let mut pageserver = Service::start("pageserver-lite", &root.path().join("pageserver")).unwrap();
    let walsync = Service::start("walsync", &root.path().join("walsync")).unwrap();
    let fuse = mount(root.path(), "a", &pageserver, &walsync);
    install_db(&fuse.mountpoint, SERVER_ARGS).unwrap();
    let db = MariaDb::start(&fuse.mountpoint, SERVER_ARGS).unwrap();
    db.sql("CREATE DATABASE sbtest").unwrap();
    sysbench(&db.socket, "oltp_read_write", "prepare", SYSBENCH_ARGS).unwrap();

    let load = {
        let socket = db.socket.clone();
        std::thread::spawn(move || {
            let args: Vec<&str> = SYSBENCH_ARGS
                .iter()
                .copied()
                .chain(["--time=14", "--report-interval=1"])
                .collect();
            sysbench(&socket, "oltp_read_write", "run", &args)
        })
    };
    std::thread::sleep(Duration::from_secs(3));
    let queued_before = fuse.status("pages_uploaded").unwrap();

    // The pageserver dies (SIGKILL). Then a table is quiesced for export: InnoDB writes its
    // dirty pages and fsyncs the file, which cannot return until the pageserver has the pages.
    let killed = Instant::now();
    pageserver.kill();
    let export = {
        let socket = db.socket.clone();
        std::thread::spawn(move || {
            let out = std::process::Command::new("mariadb")
                .arg(format!("--socket={}", socket.display()))
                .args([
                    "-uroot",
                    "-e",
                    "FLUSH TABLES sbtest.sbtest1 FOR EXPORT; UNLOCK TABLES;",
                ])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            Instant::now()
        })
    };
    std::thread::sleep(OUTAGE);
    let waiting = fuse.status("upload_queue_pages").unwrap();
    assert!(
        waiting > 0,
        "no page written during the outage waits for the pageserver"
    );
    assert!(
        !export.is_finished(),
        "a data file fsync returned while the pageserver was down"
    );
    let restarted = Instant::now();
    pageserver.restart().unwrap();
    let exported = export.join().unwrap();
    assert!(exported >= restarted);
    assert!(
        exported - restarted < Duration::from_secs(10),
        "the fsync took {:?} after the pageserver came back",
        exported - restarted
    );
    println!(
        "{waiting} pages waited for the pageserver; the export's fsync returned {:?} after the crash, {:?} after the restart",
        exported - killed,
        exported - restarted
    );

    // The workload went on to the end without an error.
    let out = load.join().unwrap().unwrap();
    let transactions = sysbench_stat(&out, "transactions:").unwrap();
    println!(
        "sysbench: {transactions} transactions, {} ignored deadlocks\n{}",
        sysbench_stat(&out, "ignored errors:").unwrap_or(0),
        out.lines()
            .filter(|l| l.starts_with('['))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(transactions > 100, "{out}");
    // The per-second reports end after the restart: sysbench was running again by then.
    let tps: Vec<f64> = out
        .lines()
        .filter_map(|l| l.split("tps: ").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(
        tps.len() >= 10 && tps[tps.len() - 2..].iter().all(|&t| t > 0.0),
        "sysbench did not continue after the outage: {tps:?}"
    );
    assert!(
        fuse.status("pages_uploaded").unwrap() > queued_before,
        "pages were uploaded"
    );
    assert_eq!(fuse.status("io_errors"), Some(0), "MariaDB was answered EIO");
    check_tables(&db);
    let sums = checksums(&db);

    // After a clean shutdown the pageserver holds exactly the node's files...
    db.shutdown().unwrap();
    let files = remote::assert_pageserver_matches(&pageserver.url, TIMELINE, &fuse.mountpoint).unwrap();
    assert!(files >= 10, "only {files} files on the pageserver");
    fuse.unmount().unwrap();

    // ...and a fresh node, from the timeline alone, has the same data.
    let fuse = mount(root.path(), "b", &pageserver, &walsync);
    let db = MariaDb::start(&fuse.mountpoint, SERVER_ARGS).unwrap();
    assert_eq!(checksums(&db), sums);
    check_tables(&db);
    db.shutdown().unwrap();
    fuse.unmount().unwrap();
}
