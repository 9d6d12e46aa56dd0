//! A page damaged on the pageserver's disk is never served (DESIGN.md invariant 5): a fresh node
//! reading it gets EIO, MariaDB reports an error for that table, the damaged bytes never reach
//! the node's cache, other tables read fine, and the failure is counted on both sides.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::Path;

use ibd_api::pageserver::{PageserverClient, ReadAt};
use ibd_e2e::{install_db, prereq, remote, FuseIbd, MariaDb, Service};

const SERVER_ARGS: &[&str] = &["--innodb-flush-neighbors=0", "--innodb-log-file-size=16M"];
const TIMELINE: &str = "main";
const BLOCK: usize = 16384;
/// Rows of `w.bad` carry this, followed by their id; the damaged page is the one holding row 1000.
const MARKER: &[u8] = b"CORRUPT-ME-1000-";

/// A page record in a pageserver segment (`pageserver-lite/src/storage/record.rs`): 24-byte
/// header (magic, kind, meta_len, data_len, data_crc, header_crc), 48-byte meta (timeline,
/// file, block, seq, lsn, written_at), then the image.
struct PageRecord {
    file: u64,
    block: u64,
    seq: u64,
    image: std::ops::Range<usize>,
}

fn page_records(segment: &[u8]) -> Vec<PageRecord> {
    const MAGIC: u32 = 0x3152_5350;
    let u32_at = |at: usize| u32::from_le_bytes(segment[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(segment[at..at + 8].try_into().unwrap());
    let mut records = Vec::new();
    let mut at = 0;
    while at + 24 <= segment.len() && u32_at(at) == MAGIC {
        let (kind, meta_len, data_len) = (segment[at + 4], u32_at(at + 8) as usize, u32_at(at + 12) as usize);
        let meta = at + 24;
        let data = meta + meta_len;
        if kind == 1 && meta_len == 48 {
            records.push(PageRecord {
                file: u64_at(meta + 8),
                block: u64_at(meta + 16),
                seq: u64_at(meta + 24),
                image: data..data + data_len,
            });
        }
        at = data + data_len;
    }
    records
}

/// Flips the marker's bytes in the newest stored version of the block of file `file` that holds
/// it (in every copy of that version). Returns the block and the damaged bytes as stored.
fn damage_newest_version(segments: &Path, file: u64) -> (u64, Vec<u8>) {
    let mut contents: Vec<(std::path::PathBuf, Vec<u8>)> = std::fs::read_dir(segments)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    // The newest version of each block of the file.
    let mut newest: HashMap<u64, u64> = HashMap::new();
    for (_, bytes) in &contents {
        for r in page_records(bytes).into_iter().filter(|r| r.file == file) {
            let seq = newest.entry(r.block).or_default();
            *seq = (*seq).max(r.seq);
        }
    }
    let find = |image: &[u8]| image.windows(MARKER.len()).position(|w| w == MARKER);
    let mut target = None;
    for (_, bytes) in &contents {
        for r in page_records(bytes) {
            if r.file == file && newest[&r.block] == r.seq && find(&bytes[r.image.clone()]).is_some() {
                target = Some((r.block, r.seq));
            }
        }
    }
    let (block, seq) = target.expect("a stored page of w/bad.ibd holds the marker row");
    let damaged: Vec<u8> = MARKER.iter().map(|b| b ^ 0xFF).collect();
    let mut copies = 0;
    for (path, bytes) in &mut contents {
        for r in page_records(bytes) {
            if (r.file, r.block, r.seq) == (file, block, seq) {
                let at = r.image.start + find(&bytes[r.image.clone()]).unwrap();
                let f = std::fs::OpenOptions::new().write(true).open(&*path).unwrap();
                f.write_all_at(&damaged, at as u64).unwrap();
                copies += 1;
            }
        }
    }
    assert!(copies >= 1);
    (block, damaged)
}

/// Whether any file under `dir` contains `needle`.
fn any_file_contains(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|e| {
        let path = e.unwrap().path();
        if path.is_dir() {
            any_file_contains(&path, needle)
        } else {
            std::fs::read(&path)
                .unwrap_or_default()
                .windows(needle.len())
                .any(|w| w == needle)
        }
    })
}

#[test]
fn a_page_damaged_on_the_pageserver_is_never_served() {
    if !prereq::require_mariadb_on_fuse("a_page_damaged_on_the_pageserver_is_never_served") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let ps_dir = root.path().join("pageserver");
    let mut pageserver = Service::start("pageserver-lite", &ps_dir).unwrap();
    let walsync = Service::start("walsync", &root.path().join("walsync")).unwrap();
    let ps_url = pageserver.url.clone();

    // Node A writes two tables and stops cleanly: every page is on the pageserver.
    let fuse = FuseIbd::mount_node(root.path(), "a", &pageserver, &walsync, TIMELINE, &[]).unwrap();
    install_db(&fuse.mountpoint, SERVER_ARGS).unwrap();
    let db = MariaDb::start(&fuse.mountpoint, SERVER_ARGS).unwrap();
    db.sql(
        "CREATE DATABASE w;
         CREATE TABLE w.bad (id INT PRIMARY KEY, v VARCHAR(200)) ENGINE=InnoDB;
         INSERT INTO w.bad SELECT seq, CONCAT('CORRUPT-ME-', seq, '-', REPEAT('x', 100)) FROM seq_1_to_2000;
         CREATE TABLE w.good (id INT PRIMARY KEY, v VARCHAR(200)) ENGINE=InnoDB;
         INSERT INTO w.good SELECT seq, CONCAT('fine-', seq, '-', REPEAT('g', 100)) FROM seq_1_to_2000;",
    )
    .unwrap();
    let good_checksum = db.sql("CHECKSUM TABLE w.good").unwrap();
    db.shutdown().unwrap();
    fuse.unmount().unwrap();
    let bad_file = remote::runtime()
        .block_on(
            PageserverClient::new(&ps_url)
                .unwrap()
                .list_files(TIMELINE, ReadAt::Latest),
        )
        .unwrap()
        .into_iter()
        .find(|f| f.path == "w/bad.ibd")
        .expect("w/bad.ibd is on the pageserver")
        .id;

    // With the pageserver stopped, damage the newest image of the page holding row 1000.
    pageserver.stop().unwrap();
    let (block, damaged) = damage_newest_version(&ps_dir.join("segments"), bad_file);
    pageserver.restart().unwrap();
    let corrupt_reads = || {
        pageserver
            .metric("pageserver_corrupt_page_reads_total")
            .unwrap()
            .unwrap_or(0.0)
    };
    assert_eq!(corrupt_reads(), 0.0);

    // A fresh node reads the file: that block fails with EIO, every time; the rest reads fine.
    let fuse = FuseIbd::mount_node(root.path(), "b", &pageserver, &walsync, TIMELINE, &[]).unwrap();
    assert!(fuse.log_text().contains("fresh node"), "{}", fuse.log_text());
    let file = std::fs::File::open(fuse.mountpoint.join("w/bad.ibd")).unwrap();
    let mut page = vec![0u8; BLOCK];
    for _ in 0..2 {
        let err = file
            .read_exact_at(&mut page, block * BLOCK as u64)
            .expect_err("the damaged page was served");
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    }
    file.read_exact_at(&mut page, 0).unwrap();
    assert_eq!(
        u32::from_be_bytes(page[4..8].try_into().unwrap()),
        0,
        "page 0 of w/bad.ibd reads fine"
    );
    let good = std::fs::read(fuse.mountpoint.join("w/good.ibd")).unwrap();
    assert!(good.len() >= 4 * BLOCK);
    assert!(corrupt_reads() >= 2.0, "the pageserver counted the refused reads");
    assert!(fuse.status("io_errors").unwrap() >= 2);
    assert!(fuse.status("pageserver_errors").unwrap() >= 2);

    // MariaDB on the fresh node: the damaged table fails with an error, the other is intact,
    // and the server keeps running.
    let mut server_args = SERVER_ARGS.to_vec();
    server_args.push("--innodb-buffer-pool-load-at-startup=OFF");
    let db = MariaDb::start(&fuse.mountpoint, &server_args).unwrap();
    assert_eq!(db.sql("CHECKSUM TABLE w.good").unwrap(), good_checksum);
    let io_errors = fuse.status("io_errors").unwrap();
    let scan = db.sql("SELECT COUNT(*), SUM(LENGTH(v)) FROM w.bad");
    let err = format!("{:#}", scan.expect_err("a scan of w.bad succeeded"));
    assert!(err.contains("from storage engine InnoDB"), "{err}");
    println!("the scan of w.bad failed: {}", err.lines().last().unwrap_or(""));
    assert!(
        fuse.status("io_errors").unwrap() > io_errors,
        "MariaDB's read was answered EIO"
    );
    assert!(
        db.error_log().contains("[ERROR] InnoDB"),
        "{}",
        db.error_log_tail(20)
    );
    assert_eq!(db.value("SELECT COUNT(*) FROM w.good").unwrap(), "2000");

    // The damaged bytes never reached the node.
    assert!(
        !any_file_contains(&fuse.cache_dir, &damaged),
        "the damaged image is in the node's cache"
    );
    db.shutdown().unwrap();
    fuse.unmount().unwrap();
}
