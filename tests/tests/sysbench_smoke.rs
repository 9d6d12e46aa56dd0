//! sysbench's OLTP read/write workload runs on a shipping mount without the doublewrite buffer:
//! prepare, a short run and cleanup all succeed (a smoke test, not a benchmark: nothing is
//! timed), and the pageserver's namespace follows the tables' creation and removal.

use ibd_api::pageserver::{PageserverClient, ReadAt};
use ibd_e2e::{install_db, prereq, remote, sysbench, sysbench_stat, FuseIbd, MariaDb, Service};

const SERVER_ARGS: &[&str] = &["--innodb-flush-neighbors=0", "--innodb-log-file-size=16M"];
const TIMELINE: &str = "main";
const SYSBENCH_ARGS: &[&str] = &[
    "--tables=2",
    "--table-size=2000",
    "--threads=2",
    "--mysql-ignore-errors=1213",
];

fn sbtest_files(url: &str) -> Vec<String> {
    let files = remote::runtime()
        .block_on(
            PageserverClient::new(url)
                .unwrap()
                .list_files(TIMELINE, ReadAt::Latest),
        )
        .unwrap();
    let mut paths: Vec<String> = files
        .into_iter()
        .map(|f| f.path)
        .filter(|p| p.starts_with("sbtest/sbtest"))
        .collect();
    paths.sort();
    paths
}

#[test]
fn sysbench_oltp_read_write_runs_on_the_mount() {
    if !prereq::require_mariadb_on_fuse("sysbench_oltp_read_write_runs_on_the_mount")
        || !prereq::require_tools("sysbench_oltp_read_write_runs_on_the_mount", &["sysbench"])
    {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let pageserver = Service::start("pageserver-lite", &root.path().join("pageserver")).unwrap();
    let walsync = Service::start("walsync", &root.path().join("walsync")).unwrap();
    let fuse = FuseIbd::mount_node(root.path(), "node", &pageserver, &walsync, TIMELINE, &[]).unwrap();
    install_db(&fuse.mountpoint, SERVER_ARGS).unwrap();
    let db = MariaDb::start(&fuse.mountpoint, SERVER_ARGS).unwrap();
    assert_eq!(db.value("SELECT @@innodb_doublewrite").unwrap(), "0");
    db.sql("CREATE DATABASE sbtest").unwrap();

    sysbench(&db.socket, "oltp_read_write", "prepare", SYSBENCH_ARGS).unwrap();
    assert_eq!(
        sbtest_files(&pageserver.url),
        [
            "sbtest/sbtest1.frm",
            "sbtest/sbtest1.ibd",
            "sbtest/sbtest2.frm",
            "sbtest/sbtest2.ibd"
        ]
    );
    let mut run_args = SYSBENCH_ARGS.to_vec();
    run_args.push("--time=5");
    let out = sysbench(&db.socket, "oltp_read_write", "run", &run_args).unwrap();
    let transactions = sysbench_stat(&out, "transactions:").unwrap();
    println!(
        "{transactions} transactions, {} ignored deadlocks",
        sysbench_stat(&out, "ignored errors:").unwrap_or(0)
    );
    assert!(transactions > 0, "{out}");
    for table in ["sbtest.sbtest1", "sbtest.sbtest2"] {
        let check = db.sql(&format!("CHECK TABLE {table}")).unwrap();
        assert!(check.ends_with("OK"), "{check}");
        assert!(db.value(&format!("SELECT COUNT(*) FROM {table}")).unwrap() == "2000");
    }
    sysbench(&db.socket, "oltp_read_write", "cleanup", SYSBENCH_ARGS).unwrap();
    assert_eq!(
        db.value("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'sbtest'")
            .unwrap(),
        "0"
    );
    assert!(
        sbtest_files(&pageserver.url).is_empty(),
        "dropped tables stay on the pageserver"
    );
    assert_eq!(fuse.status("io_errors"), Some(0));
    db.shutdown().unwrap();
    fuse.unmount().unwrap();
}
