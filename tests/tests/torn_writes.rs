//! DESIGN.md invariant 4, atomic pages, the reason `innodb_doublewrite=0` is safe on fuse-ibd: a
//! 16 KiB page write is applied whole or not at all, locally and on the pageserver, even when
//! fuse-ibd is SIGKILLed in the middle of page writes.
//!
//! 1. Concurrent writers write overlapping runs of pages (up to 1 MiB per write) of a page file;
//!    every page image is self-describing (its page number, the write's version and writer, and
//!    bytes derived from them), so a page mixing two writes, or a write and the old contents, is
//!    recognised. fuse-ibd is SIGKILLed in the middle; then every page on the pageserver and,
//!    after a remount of the same cache, every local page must be one whole image of a write
//!    issued for it; no acknowledged write may be lost locally, nor one that a later fsync
//!    covered remotely.
//! 2. MariaDB with `innodb_doublewrite=0` under a write-heavy workload; fuse-ibd is SIGKILLed
//!    while InnoDB flushes pages, then mariadbd; after a remount, InnoDB's crash recovery must
//!    succeed with no page failing its checksum, every table must pass CHECK TABLE, and the money
//!    of the bank table must add up.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ibd_api::pageserver::{FileKind, PageAddr, PageserverClient, ReadAt, ReadPagesRequest};
use ibd_e2e::{install_db, prereq, FuseIbd, MariaDb, Service};

const PAGE: usize = 16384;
const TIMELINE: &str = "main";
const FILE_NAME: &str = "torn.ibd";
/// Pages of the test file; page 0 is written once at the start and never again.
const PAGES: u64 = 256;
const WRITERS: u32 = 6;
const READERS: usize = 2;
/// Pages per write at most: 1 MiB, fuse-ibd's `max_write`.
const MAX_RUN: u64 = 64;
const ROUNDS: usize = 8;
const SPACE_ID: u32 = 0x7fff_0001;

/// xorshift64*: reproducible from the seed printed at the start of each test.
struct Rng(u64);

impl Rng {
    fn seeded() -> (Self, u64) {
        let seed = std::env::var("TORN_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 | 1);
        (Self(seed), seed)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The image of `page` written by write `version` of `writer`: an InnoDB-like header (page
/// number at 4, the version as the page LSN at 16, the space id at 34, the writer at 38) and
/// bytes derived from all three in every other position, so any mix of two images differs from
/// both.
fn image(version: u64, writer: u32, page: u64) -> Vec<u8> {
    let mut b = vec![0u8; PAGE];
    let mut state = version.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (page << 32) ^ u64::from(writer) | 1;
    for chunk in b.chunks_exact_mut(8) {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        chunk.copy_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    b[0..4].fill(0);
    b[4..8].copy_from_slice(&(page as u32).to_be_bytes());
    b[16..24].copy_from_slice(&version.to_be_bytes());
    b[34..38].copy_from_slice(&SPACE_ID.to_be_bytes());
    b[38..42].copy_from_slice(&writer.to_be_bytes());
    b
}

/// Pages `[first, first + count)` of write `version`, in a 16 KiB-aligned buffer as InnoDB
/// uses: the kernel cuts a large direct write into FUSE requests at boundaries of the user's
/// memory pages, so only an aligned buffer keeps every request made of whole 16 KiB pages.
struct Images {
    buf: Vec<u8>,
    at: usize,
    len: usize,
}

impl Images {
    fn new(version: u64, writer: u32, first: u64, count: u64) -> Self {
        let len = count as usize * PAGE;
        let mut buf = vec![0u8; len + PAGE];
        let at = buf.as_ptr().align_offset(PAGE);
        for (i, page) in (first..first + count).enumerate() {
            buf[at + i * PAGE..at + (i + 1) * PAGE].copy_from_slice(&image(version, writer, page));
        }
        Self { buf, at, len }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[self.at..self.at + self.len]
    }
}

/// Which write `data` (page `page`) is a whole image of; `Err` describes a torn or foreign page.
fn identify(page: u64, data: &[u8]) -> Result<(u64, u32), String> {
    if data.len() != PAGE {
        return Err(format!("{} bytes", data.len()));
    }
    if data.iter().all(|&b| b == 0) {
        return Err("all zero".into());
    }
    let version = u64::from_be_bytes(data[16..24].try_into().unwrap());
    let writer = u32::from_be_bytes(data[38..42].try_into().unwrap());
    let want = image(version, writer, page);
    if data == want.as_slice() {
        return Ok((version, writer));
    }
    // Where it stops matching: a tear shows as whole 4 KiB sectors from another image.
    let sectors: Vec<usize> = (0..PAGE / 4096)
        .filter(|s| data[s * 4096..(s + 1) * 4096] != want[s * 4096..(s + 1) * 4096])
        .collect();
    Err(format!(
        "TORN: header says version {version} of writer {writer}, but 4 KiB sectors {sectors:?} hold something else"
    ))
}

/// One write of the workload: pages `[first, first + count)`, issued at tick `start`,
/// acknowledged at tick `end` (`None`: failed or still in flight when fuse-ibd died).
#[derive(Clone, Debug)]
struct Write {
    version: u64,
    first: u64,
    count: u64,
    start: u64,
    end: Option<u64>,
}

impl Write {
    fn covers(&self, page: u64) -> bool {
        (self.first..self.first + self.count).contains(&page)
    }
}

#[derive(Default)]
struct Log {
    writes: Mutex<Vec<Write>>,
    /// `(start, end)` ticks of every fsync that succeeded.
    fsyncs: Mutex<Vec<(u64, u64)>>,
    clock: AtomicU64,
    versions: AtomicU64,
}

impl Log {
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn writes(&self) -> Vec<Write> {
        self.writes.lock().unwrap().clone()
    }

    /// Checks one page as found after the kill. `remote`: the pageserver's copy, which may lag
    /// behind the local one except for writes a later successful fsync covered.
    fn check(&self, page: u64, data: &[u8], remote: bool) -> Result<(), String> {
        let (version, _) = identify(page, data)?;
        let writes = self.writes();
        let found = writes
            .iter()
            .find(|w| w.version == version && w.covers(page))
            .ok_or_else(|| format!("version {version} was never written to this page"))?;
        // A write that began after `found` was acknowledged came later, and if it was itself
        // acknowledged (locally) or covered by a successful fsync (remotely) it must not be lost.
        let fsyncs = self.fsyncs.lock().unwrap().clone();
        let Some(found_end) = found.end else {
            return Ok(()); // in flight at the kill: anything started after it raced it
        };
        for w in writes.iter().filter(|w| w.covers(page) && w.start > found_end) {
            let Some(w_end) = w.end else { continue };
            let promised = !remote || fsyncs.iter().any(|&(start, _)| start > w_end);
            if promised {
                return Err(format!(
                    "LOST WRITE: holds version {version}, but version {} (ticks {}..{w_end}) came \
                     after it and was acknowledged{}",
                    w.version,
                    w.start,
                    if remote { " and then fsynced" } else { "" }
                ));
            }
        }
        Ok(())
    }
}

fn writer(file: &Path, id: u32, seed: u64, log: &Log, stop: &AtomicBool) {
    let mut rng = Rng(seed ^ (u64::from(id) << 40) | 1);
    let Ok(f) = File::options().read(true).write(true).open(file) else {
        return;
    };
    while !stop.load(Ordering::Relaxed) {
        let first = 1 + rng.below(PAGES - 1);
        let count = 1 + rng.below(MAX_RUN.min(PAGES - first));
        let version = log.versions.fetch_add(1, Ordering::SeqCst) + 1;
        let buf = Images::new(version, id, first, count);
        let index = {
            let mut writes = log.writes.lock().unwrap();
            writes.push(Write {
                version,
                first,
                count,
                start: log.tick(),
                end: None,
            });
            writes.len() - 1
        };
        if f.write_all_at(buf.bytes(), first * PAGE as u64).is_err() {
            return;
        }
        let end = log.tick();
        log.writes.lock().unwrap()[index].end = Some(end);
        if rng.below(16) == 0 {
            let start = log.tick();
            if f.sync_data().is_err() {
                return;
            }
            let end = log.tick();
            log.fsyncs.lock().unwrap().push((start, end));
        }
    }
}

/// Reads random runs of pages while the writers write: a reader must never see part of a write
/// (fuse-ibd excludes readers of a page while it is written).
fn reader(file: &Path, seed: u64, stop: &AtomicBool, torn: &Mutex<Vec<String>>) -> u64 {
    let mut rng = Rng(seed | 1);
    let Ok(f) = File::open(file) else { return 0 };
    let mut buf = vec![0u8; MAX_RUN as usize * PAGE + PAGE];
    let at = buf.as_ptr().align_offset(PAGE);
    let mut pages = 0;
    while !stop.load(Ordering::Relaxed) {
        let first = rng.below(PAGES);
        let count = 1 + rng.below(MAX_RUN.min(PAGES - first));
        let run = &mut buf[at..at + count as usize * PAGE];
        if f.read_exact_at(run, first * PAGE as u64).is_err() {
            break;
        }
        for (i, page) in run.chunks_exact(PAGE).enumerate() {
            pages += 1;
            if let Err(e) = identify(first + i as u64, page) {
                torn.lock()
                    .unwrap()
                    .push(format!("a reader saw page {}: {e}", first + i as u64));
            }
        }
    }
    pages
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Every page of the test file as the pageserver has it.
fn remote_pages(rt: &tokio::runtime::Runtime, ps: &PageserverClient) -> Vec<Option<Vec<u8>>> {
    let files = rt.block_on(ps.list_files(TIMELINE, ReadAt::Latest)).unwrap();
    let file = files
        .iter()
        .find(|f| f.path == FILE_NAME)
        .unwrap_or_else(|| panic!("{FILE_NAME} not on the pageserver: {files:?}"));
    let mut pages = Vec::new();
    let addrs: Vec<PageAddr> = (0..PAGES)
        .map(|block| PageAddr::File { file: file.id, block })
        .collect();
    for chunk in addrs.chunks(64) {
        let req = ReadPagesRequest {
            at: ReadAt::Latest,
            pages: chunk.to_vec(),
        };
        for page in rt.block_on(ps.read_pages(TIMELINE, &req)).unwrap() {
            pages.push(page.found.then(|| page.image.to_vec()));
        }
    }
    pages
}

fn local_pages(path: &Path) -> Vec<Vec<u8>> {
    let f = File::open(path).unwrap();
    (0..PAGES)
        .map(|p| {
            let mut b = vec![0u8; PAGE];
            f.read_exact_at(&mut b, p * PAGE as u64).unwrap();
            b
        })
        .collect()
}

#[test]
fn concurrent_page_writes_stay_whole_through_sigkill_of_fuse_ibd() {
    if !prereq::require_fuse("concurrent_page_writes_stay_whole_through_sigkill_of_fuse_ibd") {
        return;
    }
    let (mut rng, seed) = Rng::seeded();
    eprintln!("seed {seed} (rerun with TORN_SEED={seed})");
    let root = tempfile::tempdir().unwrap();
    let pageserver = Service::start("pageserver-lite", &root.path().join("pageserver")).unwrap();
    let (mnt, cache) = (root.path().join("datadir"), root.path().join("cache"));
    let args = ["--pageserver", &pageserver.url, "--timeline", TIMELINE];
    let rt = runtime();
    let ps = PageserverClient::new(&pageserver.url).unwrap();
    let path = mnt.join(FILE_NAME);

    // Every page starts as a whole image (version 0 of writer 0), durable everywhere.
    let mut fuse = FuseIbd::mount_with(&mnt, &cache, &args).unwrap();
    let log = Arc::new(Log::default());
    {
        let f = File::options()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let all = Images::new(0, 0, 0, PAGES);
        let start = log.tick();
        f.write_all_at(all.bytes(), 0).unwrap();
        let end = log.tick();
        f.sync_all().unwrap();
        log.writes.lock().unwrap().push(Write {
            version: 0,
            first: 0,
            count: PAGES,
            start,
            end: Some(end),
        });
    }

    let mut problems = Vec::new();
    for round in 0..ROUNDS {
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..WRITERS)
            .map(|id| {
                let (path, log, stop, seed) = (path.clone(), log.clone(), stop.clone(), rng.next());
                std::thread::spawn(move || writer(&path, id + 1, seed, &log, &stop))
            })
            .collect();
        let seen_torn = Arc::new(Mutex::new(Vec::new()));
        let readers: Vec<_> = (0..READERS)
            .map(|_| {
                let (path, stop, torn, seed) = (path.clone(), stop.clone(), seen_torn.clone(), rng.next());
                std::thread::spawn(move || reader(&path, seed, &stop, &torn))
            })
            .collect();
        let written_before = fuse.status("writes_page").unwrap_or(0);
        std::thread::sleep(Duration::from_millis(300 + rng.below(1200)));
        let written = fuse.status("writes_page").unwrap_or(0) - written_before;
        fuse.kill(); // SIGKILL, in the middle of the writes
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
        let read: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
        let in_flight = log.writes().iter().filter(|w| w.end.is_none()).count();
        eprintln!(
            "round {round}: {written} page-file writes reached fuse-ibd, {read} pages read \
             meanwhile, {in_flight} writes unacknowledged so far, {} fsyncs",
            log.fsyncs.lock().unwrap().len()
        );
        for e in seen_torn.lock().unwrap().iter() {
            problems.push(format!("round {round}: {e}"));
        }

        // The pageserver never holds a torn page, nor misses what an fsync promised.
        for (page, data) in remote_pages(&rt, &ps).into_iter().enumerate() {
            let data = data.unwrap_or_else(|| panic!("page {page} vanished from the pageserver"));
            if let Err(e) = log.check(page as u64, &data, true) {
                problems.push(format!("round {round}, pageserver, page {page}: {e}"));
            }
        }
        // Locally (the same cache, remounted): no torn page, no acknowledged write lost.
        fuse = FuseIbd::mount_with(&mnt, &cache, &args).unwrap();
        let local = local_pages(&path);
        for (page, data) in local.iter().enumerate() {
            if let Err(e) = log.check(page as u64, data, false) {
                problems.push(format!("round {round}, local cache, page {page}: {e}"));
            }
        }
        // Once fsynced after the remount, the pageserver holds exactly the local pages.
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .sync_all()
            .unwrap();
        for (page, remote) in remote_pages(&rt, &ps).into_iter().enumerate() {
            if remote.as_deref() != Some(local[page].as_slice()) {
                problems.push(format!(
                    "round {round}, page {page}: the pageserver differs from the local page after fsync"
                ));
            }
        }
        if !problems.is_empty() {
            break;
        }
    }
    fuse.unmount().unwrap();
    assert!(
        problems.is_empty(),
        "seed {seed}: DESIGN.md invariant 4 (atomic pages) violated:\n{}",
        problems.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// MariaDB with innodb_doublewrite=0.

const SERVER_ARGS: &[&str] = &[
    "--innodb-doublewrite=0",
    "--innodb-flush-neighbors=0",
    "--innodb-log-file-size=16M",
    "--innodb-buffer-pool-size=16M",
    "--innodb-io-capacity=5000",
    "--innodb-max-dirty-pages-pct=1",
    "--innodb-max-dirty-pages-pct-lwm=0.001",
];
const ACCOUNTS: u64 = 200;
const BALANCE: u64 = 1000;
const CLIENTS: usize = 4;

/// Transfers between accounts and rewrites of wide rows, in a loop, until the server dies.
const CHURN: &str = "
CREATE PROCEDURE w.churn(seed INT)
BEGIN
  DECLARE i INT DEFAULT 0;
  DECLARE a INT; DECLARE b INT; DECLARE amount INT;
  LOOP
    SET i = i + 1;
    SET a = 1 + (i * 7919 + seed) % 200, b = 1 + (i * 104729 + seed * 31) % 200;
    SET amount = 1 + (i + seed) % 50;
    START TRANSACTION;
    UPDATE w.accounts SET balance = balance - amount WHERE id = a;
    UPDATE w.accounts SET balance = balance + amount WHERE id = b;
    UPDATE w.wide SET v = REPEAT(CHAR(65 + (i + seed) % 26), 400 + i % 300), n = n + 1
      WHERE id = 1 + (i * 37 + seed) % 20000;
    INSERT INTO w.journal (client, n) VALUES (seed, i);
    COMMIT;
  END LOOP;
END";

fn start_churn(db: &MariaDb, seed: usize) -> Child {
    Command::new("mariadb")
        .arg(format!("--socket={}", db.socket.display()))
        .args(["-uroot", "-e"])
        .arg(format!("CALL w.churn({seed})"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Error log lines that mean a page failed its checksum or recovery could not read it.
fn corruption_lines(log: &str) -> Vec<&str> {
    let needles = [
        "checksum",
        "corrupt",
        "Corrupt",
        "doublewrite",
        "Unable to apply log",
        "Failed to read page",
        "is in the future",
    ];
    log.lines()
        .filter(|l| needles.iter().any(|n| l.contains(n)))
        .collect()
}

fn is_page_file(name: &str) -> bool {
    name.ends_with(".ibd")
        || name.starts_with("ibdata")
        || name
            .strip_prefix("undo")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Pages of InnoDB page files under `dir` that fail InnoDB's checksum: with doublewrite off,
/// InnoDB only ever writes whole valid pages, so any such page is a torn write.
fn bad_local_pages(dir: &Path) -> (usize, Vec<String>) {
    let (mut checked, mut bad) = (0, Vec::new());
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if !is_page_file(&name) {
                continue;
            }
            let data = std::fs::read(&path).unwrap();
            for (no, page) in data.chunks_exact(PAGE).enumerate() {
                checked += 1;
                if let Err(e) = ibd_format::page::verify_checksum(page) {
                    bad.push(format!("{} page {no}: {e}", path.display()));
                }
            }
        }
    }
    (checked, bad)
}

/// The same for every page of every page file the pageserver holds.
fn bad_remote_pages(rt: &tokio::runtime::Runtime, ps: &PageserverClient) -> (usize, Vec<String>) {
    let (mut checked, mut bad) = (0, Vec::new());
    let files = rt.block_on(ps.list_files(TIMELINE, ReadAt::Latest)).unwrap();
    for f in files.iter().filter(|f| f.kind == FileKind::Page) {
        let addrs: Vec<PageAddr> = (0..f.size / PAGE as u64)
            .map(|block| PageAddr::File { file: f.id, block })
            .collect();
        for chunk in addrs.chunks(64) {
            let req = ReadPagesRequest {
                at: ReadAt::Latest,
                pages: chunk.to_vec(),
            };
            for (addr, page) in chunk
                .iter()
                .zip(rt.block_on(ps.read_pages(TIMELINE, &req)).unwrap())
            {
                if !page.found {
                    continue;
                }
                checked += 1;
                if let Err(e) = ibd_format::page::verify_checksum(&page.image) {
                    bad.push(format!("{} {addr:?}: {e}", f.path));
                }
            }
        }
    }
    (checked, bad)
}

#[test]
fn mariadb_without_doublewrite_recovers_after_fuse_ibd_dies_mid_write() {
    if !prereq::require_mariadb_on_fuse("mariadb_without_doublewrite_recovers_after_fuse_ibd_dies_mid_write")
    {
        return;
    }
    let (mut rng, seed) = Rng::seeded();
    eprintln!("seed {seed} (rerun with TORN_SEED={seed})");
    let root = tempfile::tempdir().unwrap();
    let pageserver = Service::start("pageserver-lite", &root.path().join("pageserver")).unwrap();
    let walsync = Service::start("walsync", &root.path().join("walsync")).unwrap();
    let rt = runtime();
    let ps = PageserverClient::new(&pageserver.url).unwrap();
    let mount = || FuseIbd::mount_node(root.path(), "node", &pageserver, &walsync, TIMELINE, &[]);
    let mut fuse = mount().unwrap();
    let mnt = fuse.mountpoint.clone();
    install_db(&mnt, SERVER_ARGS).unwrap();
    let mut db = MariaDb::start(&mnt, SERVER_ARGS).unwrap();
    db.sql(&format!(
        "CREATE DATABASE w;
         CREATE TABLE w.accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB;
         INSERT INTO w.accounts SELECT seq, {BALANCE} FROM seq_1_to_{ACCOUNTS};
         CREATE TABLE w.wide (id INT PRIMARY KEY, n INT NOT NULL, v VARCHAR(1000)) ENGINE=InnoDB;
         INSERT INTO w.wide SELECT seq, 0, REPEAT('x', 500) FROM seq_1_to_20000;
         CREATE TABLE w.journal (id BIGINT AUTO_INCREMENT PRIMARY KEY, client INT, n INT) ENGINE=InnoDB;"
    ))
    .unwrap();
    db.sql(&format!("DELIMITER //\n{CHURN}//\nDELIMITER ;")).unwrap();

    for round in 0..4 {
        let clients: Vec<Child> = (0..CLIENTS).map(|c| start_churn(&db, round * 100 + c)).collect();
        // Let InnoDB flush pages for a while (the small buffer pool and dirty-page limits keep
        // the page cleaner writing), then kill fuse-ibd in the middle of it.
        let before = fuse.status("writes_page").unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(60);
        while fuse.status("writes_page").unwrap_or(0) < before + 200 {
            assert!(Instant::now() < deadline, "InnoDB is not writing pages");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(rng.below(1500)));
        let written = fuse.status("writes_page").unwrap_or(0) - before;
        fuse.kill();
        db.kill();
        for mut c in clients {
            let _ = c.kill();
            let _ = c.wait();
        }

        // Right after the kill, and after a remount of the same cache, before InnoDB touches
        // anything: every page of every page file passes InnoDB's checksum.
        let (remote_checked, remote_bad) = bad_remote_pages(&rt, &ps);
        fuse = mount().unwrap();
        let (local_checked, local_bad) = bad_local_pages(&mnt);
        eprintln!(
            "round {round}: fuse-ibd SIGKILLed after {written} page writes of the workload; \
             {remote_checked} pages on the pageserver and {local_checked} local pages checked"
        );
        assert!(
            remote_bad.is_empty() && local_bad.is_empty(),
            "round {round} (seed {seed}): torn pages after the kill:\npageserver: {remote_bad:#?}\nlocal: {local_bad:#?}"
        );
        assert!(remote_checked > 100 && local_checked > 100);

        // InnoDB's own recovery, without a doublewrite buffer.
        db = MariaDb::start(&mnt, SERVER_ARGS)
            .unwrap_or_else(|e| panic!("round {round}: recovery failed (seed {seed}): {e:#}"));
        let log = db.error_log();
        assert!(
            log.contains("Starting crash recovery"),
            "round {round}: {}",
            db.error_log_tail(30)
        );
        let bad = corruption_lines(&log);
        assert!(
            bad.is_empty(),
            "round {round} (seed {seed}): page damage in the error log:\n{}",
            bad.join("\n")
        );
        for table in ["w.accounts", "w.wide", "w.journal"] {
            let check = db.sql(&format!("CHECK TABLE {table} EXTENDED")).unwrap();
            assert!(check.ends_with("OK"), "round {round}: {check}");
        }
        let checksums = db.sql("CHECKSUM TABLE w.accounts, w.wide, w.journal").unwrap();
        assert!(!checksums.contains("NULL"), "{checksums}");
        assert_eq!(
            db.value("SELECT SUM(balance) FROM w.accounts").unwrap(),
            (ACCOUNTS * BALANCE).to_string(),
            "round {round}: money was created or destroyed"
        );
    }
    db.shutdown().unwrap();
    fuse.unmount().unwrap();
}

/// The checks above can fail: a page mixing two writes is torn, a page older than an
/// acknowledged later write is a lost write, and a page from a write still in flight is fine.
#[test]
fn the_checker_recognises_torn_pages_and_lost_writes() {
    let log = Log::default();
    let record = |version, first, count, acked: bool| {
        let start = log.tick();
        let end = acked.then(|| log.tick());
        log.writes.lock().unwrap().push(Write {
            version,
            first,
            count,
            start,
            end,
        });
    };
    record(1, 0, 4, true);
    record(2, 2, 4, true);
    record(3, 5, 1, false);

    assert_eq!(identify(3, &image(2, 7, 3)), Ok((2, 7)));
    let mut torn = image(1, 7, 3);
    torn[8192..].copy_from_slice(&image(2, 7, 3)[8192..]);
    let err = identify(3, &torn).unwrap_err();
    assert!(err.starts_with("TORN") && err.contains("[2, 3]"), "{err}");
    assert!(identify(3, &image(2, 7, 4)).is_err(), "another page's image");
    assert!(identify(3, &[0; PAGE]).is_err());

    assert_eq!(log.check(3, &image(2, 7, 3), false), Ok(()));
    assert_eq!(
        log.check(1, &image(1, 7, 1), false),
        Ok(()),
        "no later write covers page 1"
    );
    let lost = log.check(3, &image(1, 7, 3), false).unwrap_err();
    assert!(lost.starts_with("LOST WRITE"), "{lost}");
    // Remotely an unsynced later write may still be missing, unless an fsync covered it.
    assert_eq!(log.check(3, &image(1, 7, 3), true), Ok(()));
    let start = log.tick();
    log.fsyncs.lock().unwrap().push((start, log.tick()));
    assert!(log
        .check(3, &image(1, 7, 3), true)
        .unwrap_err()
        .contains("fsynced"));
    assert!(log
        .check(0, &image(9, 7, 0), false)
        .unwrap_err()
        .contains("never written"));
    // Page 5: the in-flight write 3 or the older write 2 are both possible outcomes.
    assert_eq!(log.check(5, &image(3, 7, 5), false), Ok(()));
    assert_eq!(log.check(5, &image(2, 7, 5), false), Ok(()));
}
