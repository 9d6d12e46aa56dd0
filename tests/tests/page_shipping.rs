//! fuse-ibd ships every page and file block to a real pageserver, an fsync of a data file
//! returns only once the pageserver has it (DESIGN.md invariant 2), and checkpoints leave markers
//! (invariant 8).

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use ibd_api::pageserver::{PageAddr, PageserverClient, ReadAt};
use ibd_e2e::{install_db, prereq, remote, FuseIbd, MariaDb, Service};

const SERVER_ARGS: &[&str] = &["--innodb-flush-neighbors=0", "--innodb-log-file-size=16M"];
const TIMELINE: &str = "main";
const BLOCK: u64 = 16384;

#[test]
fn pages_reach_the_pageserver_and_data_fsync_waits_for_it() {
    if !prereq::require_mariadb_on_fuse("pages_reach_the_pageserver_and_data_fsync_waits_for_it") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let pageserver = Service::start("pageserver-lite", &root.path().join("pageserver")).unwrap();
    let walsync = Service::start("walsync", &root.path().join("walsync")).unwrap();
    let mount = || FuseIbd::mount_node(root.path(), "node", &pageserver, &walsync, TIMELINE, &[]);
    let fuse = mount().unwrap();
    let mnt = fuse.mountpoint.clone();
    install_db(&mnt, SERVER_ARGS).unwrap();
    let db = MariaDb::start(&mnt, SERVER_ARGS).unwrap();
    db.sql(
        "CREATE DATABASE w; CREATE TABLE w.t (id INT PRIMARY KEY, v VARCHAR(100)) ENGINE=InnoDB;
         INSERT INTO w.t SELECT seq, CONCAT('row-', seq) FROM seq_1_to_20000;
         CREATE TABLE w.gone (id INT) ENGINE=InnoDB; DROP TABLE w.gone;
         CREATE TABLE w.old (id INT) ENGINE=InnoDB; RENAME TABLE w.old TO w.new;",
    )
    .unwrap();
    // A clean shutdown flushes every page and fsyncs every data file: all of it must be remote.
    db.shutdown().unwrap();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ps = PageserverClient::new(&pageserver.url).unwrap();
    let checked = remote::assert_pageserver_matches(&pageserver.url, TIMELINE, &mnt).unwrap();
    assert!(checked >= 10, "only {checked} files shipped");
    let files = rt.block_on(ps.list_files(TIMELINE, ReadAt::Latest)).unwrap();
    let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
    assert!(
        paths.contains(&"w/t.ibd") && paths.contains(&"w/new.ibd") && paths.contains(&"w/t.frm"),
        "{paths:?}"
    );
    assert!(
        !paths
            .iter()
            .any(|p| p.starts_with("w/gone") || p.starts_with("w/old")),
        "{paths:?}"
    );
    let t = files.iter().find(|f| f.path == "w/t.ibd").unwrap();
    assert!(
        t.space_id.is_some_and(|s| s > 0),
        "the space id of w/t.ibd was recorded"
    );
    assert!(files.iter().find(|f| f.path == "ibdata1").unwrap().space_id == Some(0));

    // Checkpoints left markers, the newest pinned to page versions that exist.
    let markers = rt.block_on(ps.list_markers(TIMELINE)).unwrap();
    let newest = markers
        .iter()
        .max_by_key(|m| m.checkpoint_lsn)
        .expect("checkpoint markers");
    assert!(newest.page_store_seq > 0 && newest.log_end_lsn_at_write >= newest.checkpoint_end_lsn);

    // Invariant 2: while the pageserver cannot answer, an fsync of a written page does not return.
    // Everything but the data itself reaches the pageserver first (the file, its size): during the
    // outage only an overwrite of block 1 and its fsync happen, and only durability can hold them.
    let path = mnt.join("w").join("probe.ibd");
    let file = std::fs::File::options()
        .create_new(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    file.write_all_at(&[0x11; BLOCK as usize], BLOCK).unwrap();
    file.sync_data().unwrap();
    pageserver.signal(libc::SIGSTOP);
    let fsynced = std::thread::spawn(move || {
        file.write_all_at(&[0xA5; BLOCK as usize], BLOCK).unwrap();
        file.sync_data().unwrap();
        Instant::now()
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !fsynced.is_finished(),
        "fsync returned before the pageserver had the page"
    );
    let thawed = Instant::now();
    pageserver.signal(libc::SIGCONT);
    assert!(fsynced.join().unwrap() >= thawed);
    let probe = rt
        .block_on(ps.list_files(TIMELINE, ReadAt::Latest))
        .unwrap()
        .into_iter()
        .find(|f| f.path == "w/probe.ibd")
        .expect("the new file is registered");
    let page = rt
        .block_on(ps.get_page(
            TIMELINE,
            PageAddr::File {
                file: probe.id,
                block: 1,
            },
            ReadAt::Latest,
        ))
        .unwrap();
    assert!(page.found && page.image.iter().all(|&b| b == 0xA5));
    std::fs::remove_file(mnt.join("w").join("probe.ibd")).unwrap();

    // A clean unmount and a remount of the same cache: the server finds its data.
    fuse.unmount().unwrap();
    let fuse = mount().unwrap();
    let db = MariaDb::start(&mnt, SERVER_ARGS).unwrap();
    assert_eq!(db.value("SELECT COUNT(*) FROM w.t").unwrap(), "20000");
    db.shutdown().unwrap();
    remote::assert_pageserver_matches(&pageserver.url, TIMELINE, &mnt).unwrap();
    fuse.unmount().unwrap();
}

#[test]
fn a_rename_over_a_shipped_file_replaces_it_on_the_pageserver() {
    if !prereq::require_fuse("a_rename_over_a_shipped_file_replaces_it_on_the_pageserver") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let pageserver = Service::start("pageserver-lite", &root.path().join("pageserver")).unwrap();
    let args = ["--pageserver", &pageserver.url, "--timeline", TIMELINE];
    let (mnt, cache) = (root.path().join("datadir"), root.path().join("cache"));
    let fuse = FuseIbd::mount_with(&mnt, &cache, &args).unwrap();
    for (name, fill) in [("a.ibd", 0xaa_u8), ("b.ibd", 0xbb)] {
        let f = std::fs::File::create(mnt.join(name)).unwrap();
        f.write_all_at(&vec![fill; 2 * BLOCK as usize], 0).unwrap();
        f.sync_all().unwrap();
    }
    let rt = remote::runtime();
    let ps = PageserverClient::new(&pageserver.url).unwrap();
    let files = || rt.block_on(ps.list_files(TIMELINE, ReadAt::Latest)).unwrap();
    let b_id = files().iter().find(|f| f.path == "b.ibd").unwrap().id;

    std::fs::rename(mnt.join("b.ibd"), mnt.join("a.ibd")).unwrap();
    let live: Vec<(String, u64)> = files().into_iter().map(|f| (f.path, f.id)).collect();
    assert_eq!(
        live,
        vec![("a.ibd".to_string(), b_id)],
        "b.ibd took a.ibd's place"
    );
    assert_eq!(
        remote::assert_pageserver_matches(&pageserver.url, TIMELINE, &mnt).unwrap(),
        1
    );
    fuse.unmount().unwrap();
}
