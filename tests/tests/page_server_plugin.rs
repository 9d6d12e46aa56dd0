//! The `innodb_page_server` plugin in a real, unpatched mariadbd: its variables show the fuse-ibd
//! mount under the datadir, its `Page_server_*` status is live, it refuses to claim a plain
//! disk is disaggregated, and it warns about doublewrite on a fuse-ibd datadir.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use ibd_e2e::{install_db, plugin_dir, prereq, FuseIbd, MariaDb, Service};

const SERVER_ARGS: &[&str] = &["--innodb-flush-neighbors=0", "--innodb-log-file-size=16M"];
const TIMELINE: &str = "main";
const DOUBLEWRITE_WARNING: &str = "innodb_doublewrite=ON on the fuse-ibd datadir";

/// Server arguments that load the plugin from `plugins`, plus `extra`.
fn with_plugin(plugins: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = SERVER_ARGS.iter().map(|s| s.to_string()).collect();
    args.push(format!("--plugin-dir={}", plugins.display()));
    args.push("--plugin-load-add=innodb_page_server.so".into());
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn start(datadir: &Path, args: &[String]) -> anyhow::Result<MariaDb> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    MariaDb::start(datadir, &args)
}

/// `name -> value` of a two-column SHOW.
fn show(db: &MariaDb, statement: &str) -> BTreeMap<String, String> {
    db.sql(statement)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn status(db: &MariaDb) -> BTreeMap<String, String> {
    show(db, "SHOW GLOBAL STATUS LIKE 'Page_server%'")
}

fn number(status: &BTreeMap<String, String>, name: &str) -> u64 {
    status
        .get(name)
        .unwrap_or_else(|| panic!("{name} missing from {status:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Polls SHOW STATUS until `done` holds (the status is live, so it must get there).
fn wait_for_status(
    db: &MariaDb,
    what: &str,
    done: impl Fn(&BTreeMap<String, String>) -> bool,
) -> BTreeMap<String, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(db);
        if done(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: never happened; status {s:?}; error log:\n{}",
            db.error_log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Once the mount's counters hold still, SHOW STATUS shows exactly what its status file says:
/// the values are read live, and the mean is total / count.
fn agrees_with_the_mount(db: &MariaDb, fuse: &FuseIbd) {
    let keys = [
        "cache_hits",
        "cache_misses",
        "remote_fetches",
        "remote_fetched_pages",
        "remote_fetch_us_total",
        "pages_uploaded",
        "page_store_seq",
        "wal_shipped_lsn",
        "wal_durable_lsn",
        "term",
    ];
    let read = || keys.map(|k| fuse.status(k).unwrap_or(0));
    for _ in 0..50 {
        let (first, shown, second) = (read(), status(db), read());
        if first != second {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        let file = |k: &str| first[keys.iter().position(|x| *x == k).unwrap()];
        let mean = file("remote_fetch_us_total")
            .checked_div(file("remote_fetches"))
            .unwrap_or(0);
        for (name, want) in [
            ("Page_server_cache_hits", file("cache_hits")),
            ("Page_server_cache_misses", file("cache_misses")),
            ("Page_server_remote_reads", file("remote_fetches")),
            ("Page_server_remote_read_pages", file("remote_fetched_pages")),
            ("Page_server_remote_read_avg_us", mean),
            ("Page_server_pages_uploaded", file("pages_uploaded")),
            ("Page_server_page_store_seq", file("page_store_seq")),
            ("Page_server_wal_shipped_lsn", file("wal_shipped_lsn")),
            ("Page_server_wal_durable_lsn", file("wal_durable_lsn")),
            ("Page_server_term", file("term")),
        ] {
            assert_eq!(number(&shown, name), want, "{name} vs the mount's status file");
        }
        return;
    }
    panic!("the mount's counters never held still for one SHOW STATUS");
}

const STATUS_NAMES: &[&str] = &[
    "Page_server_cache_evictions",
    "Page_server_cache_hits",
    "Page_server_cache_misses",
    "Page_server_cache_resident_bytes",
    "Page_server_doublewrite_warning",
    "Page_server_errors",
    "Page_server_io_errors",
    "Page_server_page_store_seq",
    "Page_server_pages_uploaded",
    "Page_server_pageserver_errors",
    "Page_server_remote_read_avg_us",
    "Page_server_remote_read_pages",
    "Page_server_remote_reads",
    "Page_server_status_read_errors",
    "Page_server_term",
    "Page_server_upload_queue_bytes",
    "Page_server_upload_queue_pages",
    "Page_server_wal_durable_lsn",
    "Page_server_wal_shipped_lsn",
    "Page_server_walsync_errors",
];

#[test]
fn variables_and_status_come_from_the_fuse_ibd_mount() {
    if !prereq::require_mariadb_on_fuse("variables_and_status_come_from_the_fuse_ibd_mount") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let plugins = plugin_dir(&root.path().join("plugins")).unwrap();
    let pageserver = Service::start("pageserver-lite", &root.path().join("pageserver")).unwrap();
    let walsync = Service::start("walsync", &root.path().join("walsync")).unwrap();
    let mount =
        |node: &str| FuseIbd::mount_node(root.path(), node, &pageserver, &walsync, TIMELINE, &[]).unwrap();
    let port: u16 = pageserver.url.rsplit_once(':').unwrap().1.parse().unwrap();

    let fuse = mount("a");
    install_db(&fuse.mountpoint, SERVER_ARGS).unwrap();
    let args = with_plugin(
        &plugins,
        &["--innodb-page-server=FORCE", "--innodb-page-server-enabled=ON"],
    );
    let db = start(&fuse.mountpoint, &args).unwrap();

    // The variables read exactly like a patched server's, with the mount's page server.
    let vars = db.sql("SHOW VARIABLES LIKE 'innodb_page_server%'").unwrap();
    eprintln!("SHOW VARIABLES LIKE 'innodb_page_server%':\n{vars}");
    let vars = show(&db, "SHOW VARIABLES LIKE 'innodb_page_server%'");
    let expected: BTreeMap<String, String> = [
        ("innodb_page_server_address", "127.0.0.1".to_string()),
        ("innodb_page_server_enabled", "ON".to_string()),
        ("innodb_page_server_port", port.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(vars, expected);
    assert_eq!(
        db.value(
            "SELECT PLUGIN_STATUS FROM information_schema.PLUGINS WHERE PLUGIN_NAME = 'innodb_page_server'"
        )
        .unwrap(),
        "ACTIVE"
    );
    assert!(
        db.error_log().contains("innodb_page_server: datadir")
            && db
                .error_log()
                .contains(&format!("page server {}", pageserver.url)),
        "{}",
        db.error_log_tail(20)
    );

    // Every status variable is there, under its own name (no plugin-name prefix).
    let before = status(&db);
    assert_eq!(
        before.keys().map(String::as_str).collect::<Vec<_>>(),
        STATUS_NAMES
    );
    assert_eq!(
        number(&before, "Page_server_term"),
        fuse.status("term").unwrap(),
        "the writer term is the mount's"
    );
    assert!(number(&before, "Page_server_term") > 0);
    assert_eq!(before["Page_server_doublewrite_warning"], "OFF");
    assert_eq!(number(&before, "Page_server_errors"), 0);
    // Also through information_schema, which the server fills by the same function.
    let is = db
        .value("SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'PAGE_SERVER_TERM'")
        .unwrap();
    assert_eq!(is, before["Page_server_term"]);

    // A workload: redo is shipped and made durable, dirty pages are flushed and uploaded.
    db.sql(
        "CREATE DATABASE w; CREATE TABLE w.t (id INT PRIMARY KEY, v VARCHAR(200)) ENGINE=InnoDB;
         INSERT INTO w.t SELECT seq, REPEAT(CHAR(65 + seq % 26), 150) FROM seq_1_to_30000;
         SET GLOBAL innodb_max_dirty_pages_pct_lwm = 0.001; SET GLOBAL innodb_max_dirty_pages_pct = 0;",
    )
    .unwrap();
    let flushed = db.flushed_lsn().unwrap();
    let after = wait_for_status(&db, "pages uploaded and redo durable", |s| {
        number(s, "Page_server_pages_uploaded") > number(&before, "Page_server_pages_uploaded") + 100
            && number(s, "Page_server_wal_durable_lsn") >= flushed
    });
    assert!(number(&after, "Page_server_wal_shipped_lsn") >= number(&after, "Page_server_wal_durable_lsn"));
    assert!(number(&after, "Page_server_page_store_seq") > number(&before, "Page_server_page_store_seq"));
    agrees_with_the_mount(&db, &fuse);
    let shown = db.sql("SHOW GLOBAL STATUS LIKE 'Page_server%'").unwrap();
    eprintln!("SHOW GLOBAL STATUS LIKE 'Page_server%' after the workload:\n{shown}");
    db.shutdown().unwrap();
    fuse.unmount().unwrap();

    // Another node with an empty cache reads its pages from the page server: remote reads and
    // their latency show up. With innodb_doublewrite=ON the plugin warns (log and status).
    let fuse = mount("b");
    let args = with_plugin(
        &plugins,
        &[
            "--innodb-page-server=FORCE",
            "--innodb-page-server-enabled=ON",
            "--innodb-doublewrite=1",
        ],
    );
    let db = start(&fuse.mountpoint, &args).unwrap();
    assert_eq!(db.value("SELECT COUNT(*) FROM w.t").unwrap(), "30000");
    assert_eq!(show(&db, "SHOW VARIABLES LIKE 'innodb_page_server%'"), expected);
    let fresh = wait_for_status(&db, "the doublewrite warning", |s| {
        s["Page_server_doublewrite_warning"] == "ON"
    });
    assert!(
        db.error_log().contains(DOUBLEWRITE_WARNING),
        "{}",
        db.error_log_tail(20)
    );
    assert!(number(&fresh, "Page_server_cache_misses") > 0);
    assert!(number(&fresh, "Page_server_remote_reads") > 0);
    assert!(number(&fresh, "Page_server_remote_read_pages") >= number(&fresh, "Page_server_remote_reads"));
    assert!(number(&fresh, "Page_server_remote_read_avg_us") > 0);
    agrees_with_the_mount(&db, &fuse);
    eprintln!(
        "SHOW GLOBAL STATUS LIKE 'Page_server%' on a fresh node:\n{}",
        db.sql("SHOW GLOBAL STATUS LIKE 'Page_server%'").unwrap()
    );

    // In a running server: UNINSTALL removes everything, INSTALL SONAME initialises it again
    // (the doublewrite check then runs at once, the server having started long ago).
    db.sql("UNINSTALL SONAME 'innodb_page_server'").unwrap();
    assert_eq!(db.sql("SHOW VARIABLES LIKE 'innodb_page_server%'").unwrap(), "");
    assert_eq!(db.sql("SHOW STATUS LIKE 'Page_server%'").unwrap(), "");
    db.sql("INSTALL SONAME 'innodb_page_server'").unwrap();
    assert_eq!(show(&db, "SHOW VARIABLES LIKE 'innodb_page_server%'"), expected);
    wait_for_status(&db, "the doublewrite warning after INSTALL SONAME", |s| {
        s["Page_server_doublewrite_warning"] == "ON"
    });
    assert_eq!(db.error_log().matches(DOUBLEWRITE_WARNING).count(), 2);
    db.sql("UNINSTALL SONAME 'innodb_page_server'").unwrap();
    db.shutdown().unwrap();

    // The address and port are the mount's to decide: asking for another one refuses to start.
    let args = with_plugin(
        &plugins,
        &[
            "--innodb-page-server=FORCE",
            "--innodb-page-server-address=10.9.9.9",
        ],
    );
    let err = start(&fuse.mountpoint, &args)
        .err()
        .expect("the server must refuse to start");
    let err = format!("{err:#}");
    assert!(
        err.contains("innodb_page_server_address=10.9.9.9") && err.contains(&pageserver.url),
        "{err}"
    );
    fuse.unmount().unwrap();
}

#[test]
fn a_plain_datadir_is_never_taken_for_a_disaggregated_one() {
    if !prereq::require_mariadb("a_plain_datadir_is_never_taken_for_a_disaggregated_one") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let plugins = plugin_dir(&root.path().join("plugins")).unwrap();
    let datadir = root.path().join("datadir");
    install_db(&datadir, SERVER_ARGS).unwrap();
    let datadir_shown = datadir.canonicalize().unwrap();

    // Without the plugin the server starts as always and has no such variables.
    let db = MariaDb::start(&datadir, SERVER_ARGS).unwrap();
    assert_eq!(db.sql("SHOW VARIABLES LIKE 'innodb_page_server%'").unwrap(), "");
    db.shutdown().unwrap();

    // enabled=ON on a plain disk: the plugin's init fails and the log says why and what to do;
    // the server itself still starts (the plugin is just not there).
    let args = with_plugin(&plugins, &["--innodb-page-server-enabled=ON"]);
    let db = start(&datadir, &args).unwrap();
    let log = db.error_log();
    let why = format!(
        "innodb_page_server: innodb_page_server_enabled=ON, but the datadir is not a fuse-ibd mount: {}",
        datadir_shown.display()
    );
    assert!(log.contains(&why), "{log}");
    assert!(log.contains("not on a fuse-ibd mount"), "{log}");
    assert!(
        log.contains("innodb_page_server_enabled=OFF"),
        "the log says how to run on local disk"
    );
    assert_eq!(db.sql("SHOW VARIABLES LIKE 'innodb_page_server%'").unwrap(), "");
    assert_eq!(db.sql("SHOW STATUS LIKE 'Page_server%'").unwrap(), "");
    db.shutdown().unwrap();

    // With innodb_page_server=FORCE the server refuses to start at all.
    let args = with_plugin(
        &plugins,
        &["--innodb-page-server=FORCE", "--innodb-page-server-enabled=ON"],
    );
    let err = start(&datadir, &args)
        .err()
        .expect("the server must refuse to start");
    assert!(format!("{err:#}").contains(&why), "{err:#}");

    // Loaded without the requirement, it reports the truth: nothing is shipped, nothing to warn
    // about (doublewrite ON is right on a plain disk).
    let args = with_plugin(&plugins, &["--innodb-doublewrite=1"]);
    let db = start(&datadir, &args).unwrap();
    let vars = show(&db, "SHOW VARIABLES LIKE 'innodb_page_server%'");
    assert_eq!(vars["innodb_page_server_enabled"], "OFF");
    assert_eq!(vars["innodb_page_server_address"], "");
    assert_eq!(vars["innodb_page_server_port"], "0");
    let s = status(&db);
    assert_eq!(s.len(), STATUS_NAMES.len());
    for (name, value) in &s {
        assert!(value == "0" || value == "OFF", "{name}={value} on a plain disk");
    }
    assert!(db.error_log().contains("is not a fuse-ibd mount"));
    db.shutdown().unwrap();

    // INSTALL SONAME at run time works too, and UNINSTALL removes every variable.
    let db = start(&datadir, &[format!("--plugin-dir={}", plugins.display())]).unwrap();
    db.sql("INSTALL SONAME 'innodb_page_server'").unwrap();
    assert_eq!(show(&db, "SHOW VARIABLES LIKE 'innodb_page_server%'").len(), 3);
    assert_eq!(status(&db).len(), STATUS_NAMES.len());
    db.sql("UNINSTALL SONAME 'innodb_page_server'").unwrap();
    assert_eq!(db.sql("SHOW VARIABLES LIKE 'innodb_page_server%'").unwrap(), "");
    assert_eq!(db.sql("SHOW STATUS LIKE 'Page_server%'").unwrap(), "");
    db.shutdown().unwrap();
}
