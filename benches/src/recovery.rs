//! Recovery to first query after losing the local disk, two ways:
//!
//! - `mariadb-backup` (the baseline): restore a local backup copy: prepare + copy-back + start
//!   until a query on the data answers;
//! - `fuse-ibd-fresh-node`: the node (mariadbd and fuse-ibd) is SIGKILLed and its cache deleted;
//!   a fresh fuse-ibd node mounts the timeline on an empty cache, mariadbd starts on it and runs
//!   crash recovery, and the first query fetches what it needs from the pageserver.
//!
//! Both then time a full scan of the table, which on the fresh node fetches every page: the cost
//! of lazy fetching that the fast first query defers.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::backend::{fuse_ibd_status, FuseIbdNode};
use crate::mariadb::{self, Server};
use crate::process;
use crate::progress::Progress;
use crate::remote::{FuseIbdBinaries, Storage};
use crate::report::Sample;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecoverySettings {
    pub sizes_mib: Vec<u64>,
    /// Which of [`METHODS`] run, in this order.
    pub methods: Vec<String>,
    pub buffer_pool_mib: u64,
    /// The query whose first success ends the clock: it reads a row, not just the catalogue.
    pub first_query: String,
    /// Timed after the first query; its count is checked against the rows loaded.
    pub full_scan: String,
    /// Filled in by the run: every server argument (identical to the sysbench servers').
    pub server_args: Vec<String>,
}

pub const FIRST_QUERY: &str = "SELECT LENGTH(payload) FROM bench.recovery_data WHERE id = 1";
/// InnoDB counts rows by walking the clustered index (the table has no other): every leaf page.
pub const FULL_SCAN: &str = "SELECT COUNT(*) FROM bench.recovery_data";

pub const BACKUP: &str = "mariadb-backup";
pub const FRESH_NODE: &str = "fuse-ibd-fresh-node";
/// Names accepted by `--recovery-methods`.
pub const METHODS: &[&str] = &[BACKUP, FRESH_NODE];

/// Rows of ~4 KB: four per 16 KiB page, so the row count follows the wanted size simply.
const ROW_BYTES: u64 = 4000;
/// Rows per INSERT ... SELECT, small enough to keep each transaction's undo log modest.
const ROWS_PER_STATEMENT: u64 = 50_000;
/// Loads and backups of 10 GiB take long on a loaded machine.
const LONG_STEP: Duration = Duration::from_secs(7200);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecoveryRun {
    pub method: String,
    pub size_mib: u64,
    pub iteration: u32,
    /// Size of the recovered datadir.
    pub data_mib: f64,
    /// mariadb-backup only.
    pub prepare_s: Option<f64>,
    /// mariadb-backup only.
    pub copy_back_s: Option<f64>,
    /// fuse-ibd only: from starting the daemon on an empty cache until the datadir is mounted.
    pub mount_s: Option<f64>,
    pub start_to_first_query_s: f64,
    /// From the local disk being wiped to the first query's answer.
    pub total_s: f64,
    /// The full scan after the first query.
    pub full_scan_s: f64,
    /// fuse-ibd only: MiB fetched from the pageserver until the first query answered.
    pub fetched_mib_first_query: Option<f64>,
    /// fuse-ibd only: MiB fetched from the pageserver by the end of the full scan.
    pub fetched_mib_full_scan: Option<f64>,
    /// Whether InnoDB replayed redo at start (it must on a fresh node after a crash).
    pub crash_recovery: bool,
    /// Whether the page cache was emptied before the clock started (needs root).
    pub page_cache_dropped: bool,
}

impl Sample for RecoveryRun {
    fn case(&self) -> String {
        format!("{} MiB", self.size_mib)
    }

    fn backend(&self) -> &str {
        &self.method
    }

    fn values(&self) -> Vec<(String, f64)> {
        [
            ("total s", Some(self.total_s)),
            ("prepare s", self.prepare_s),
            ("copy-back s", self.copy_back_s),
            ("mount s", self.mount_s),
            ("start to first query s", Some(self.start_to_first_query_s)),
            ("full scan s", Some(self.full_scan_s)),
            ("fetched MiB to first query", self.fetched_mib_first_query),
            ("fetched MiB by scan end", self.fetched_mib_full_scan),
            ("datadir MiB", Some(self.data_mib)),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name.to_string(), value?)))
        .collect()
    }
}

/// For each size, each method in turn: load the data, then `iterations` times lose the local
/// disk and time the way back. Methods run one after the other, not interleaved, so that at
/// 10 GiB only one method's copies of the data are on the disk at a time.
pub fn run_suite(
    settings: &mut RecoverySettings,
    iterations: u32,
    work: &Path,
    raw_dir: &Path,
    fuse_ibd: &FuseIbdBinaries,
) -> Result<Vec<RecoveryRun>> {
    std::fs::create_dir_all(raw_dir)?;
    let args = mariadb::server_args(settings.buffer_pool_mib);
    settings.server_args = args.clone();
    let mut progress = Progress::new(
        "recovery",
        settings.sizes_mib.len() * settings.methods.len() * iterations as usize,
    );
    let mut runs = Vec::new();
    for &size_mib in &settings.sizes_mib {
        for method in &settings.methods {
            let dir = work.join(format!("recovery-{size_mib}-{method}"));
            std::fs::create_dir_all(&dir)?;
            let raw = |name: &str| raw_dir.join(format!("recovery-{size_mib}-{method}-{name}.log"));
            let measured = match method.as_str() {
                BACKUP => backup_restore(&args, size_mib, iterations, &dir, &raw, &mut progress)?,
                FRESH_NODE => fresh_node(&args, size_mib, iterations, &dir, &raw, fuse_ibd, &mut progress)?,
                other => bail!(
                    "unknown recovery method {other:?}; available: {}",
                    METHODS.join(", ")
                ),
            };
            runs.extend(measured);
            std::fs::remove_dir_all(&dir)?;
        }
    }
    Ok(runs)
}

/// The baseline: load on the local disk, back up once, then each iteration deletes the datadir,
/// copies the pristine backup (untimed), and times prepare + copy-back + start.
fn backup_restore(
    args: &[String],
    size_mib: u64,
    iterations: u32,
    dir: &Path,
    raw: &dyn Fn(&str) -> std::path::PathBuf,
    progress: &mut Progress,
) -> Result<Vec<RecoveryRun>> {
    let (datadir, backup, restore, run_dir) = (
        dir.join("data"),
        dir.join("backup"),
        dir.join("restore"),
        dir.join("run"),
    );
    progress.note(&format!(
        "loading {size_mib} MiB on the local disk and taking a backup"
    ));
    mariadb::install(&datadir, &run_dir, &raw("install-db"))?;
    let server = Server::start(&datadir, &run_dir, args)?;
    let rows = load(&server, size_mib, progress)?;
    let mut backup_command = mariadb_backup(&["--backup"]);
    backup_command.arg(format!("--target-dir={}", backup.display()));
    backup_command
        .arg(format!("--socket={}", server.socket().display()))
        .arg("--user=root");
    process::run_logged(
        &mut backup_command,
        "mariadb-backup --backup",
        &raw("backup"),
        LONG_STEP,
    )?;
    server.stop()?;
    let mut runs = Vec::new();
    for iteration in 1..=iterations {
        process::check_interrupted()?;
        // The "disk loss": the datadir is gone; a pristine backup copy is needed each time
        // because --prepare changes the backup in place.
        std::fs::remove_dir_all(&datadir)?;
        let _ = std::fs::remove_dir_all(&restore);
        copy_dir(&backup, &restore)?;
        let page_cache_dropped = drop_page_cache();
        let started = Instant::now();
        let mut prepare = mariadb_backup(&["--prepare"]);
        prepare.arg(format!("--target-dir={}", restore.display()));
        process::run_logged(
            &mut prepare,
            "mariadb-backup --prepare",
            &raw("prepare"),
            LONG_STEP,
        )?;
        let prepared = Instant::now();
        let mut copy_back = mariadb_backup(&["--copy-back"]);
        copy_back.arg(format!("--target-dir={}", restore.display()));
        copy_back.arg(format!("--datadir={}", datadir.display()));
        process::run_logged(
            &mut copy_back,
            "mariadb-backup --copy-back",
            &raw("copy-back"),
            LONG_STEP,
        )?;
        let copied = Instant::now();
        let mut server = Server::spawn(&datadir, &run_dir, args)?;
        server.wait_until_answering(FIRST_QUERY, Duration::from_secs(600))?;
        let answered = Instant::now();
        check_full_scan(&server, rows)?;
        let scanned = Instant::now();
        let crash_recovery = server.ran_crash_recovery();
        server.stop()?;
        let run = RecoveryRun {
            method: BACKUP.to_string(),
            size_mib,
            iteration,
            data_mib: mebibytes(mariadb::directory_size(&datadir)?),
            prepare_s: Some((prepared - started).as_secs_f64()),
            copy_back_s: Some((copied - prepared).as_secs_f64()),
            mount_s: None,
            start_to_first_query_s: (answered - copied).as_secs_f64(),
            total_s: (answered - started).as_secs_f64(),
            full_scan_s: (scanned - answered).as_secs_f64(),
            fetched_mib_first_query: None,
            fetched_mib_full_scan: None,
            crash_recovery,
            page_cache_dropped,
        };
        progress.step_done(
            &format!("{size_mib} MiB via {BACKUP} (iteration {iteration}/{iterations})"),
            &format!(
                "{:.2} s (prepare {:.2}, copy-back {:.2}, start {:.2}); full scan {:.2} s",
                run.total_s,
                run.prepare_s.unwrap_or_default(),
                run.copy_back_s.unwrap_or_default(),
                run.start_to_first_query_s,
                run.full_scan_s
            ),
        );
        runs.push(run);
    }
    Ok(runs)
}

/// fuse-ibd: load through a node shipping to a pageserver and walsync, then lose the node
/// (SIGKILL of mariadbd and fuse-ibd, cache deleted). Each iteration mounts a fresh node on
/// an empty cache and times mount + mariadbd start (crash recovery) until the first query
/// answers; it then loses that node the same way, so every iteration recovers from a crash.
/// The node uses fuse-ibd's default cache budget (1 GiB).
fn fresh_node(
    args: &[String],
    size_mib: u64,
    iterations: u32,
    dir: &Path,
    raw: &dyn Fn(&str) -> std::path::PathBuf,
    binaries: &FuseIbdBinaries,
    progress: &mut Progress,
) -> Result<Vec<RecoveryRun>> {
    progress.note(&format!(
        "loading {size_mib} MiB through fuse-ibd into pageserver-lite and walsync"
    ));
    let storage = Storage::start(binaries, &dir.join("storage"))?;
    let node = FuseIbdNode::in_dir(&binaries.fuse_ibd, dir, storage.mount_args())?;
    let run_dir = dir.join("run");
    let mount = node.mount()?;
    mariadb::install(&node.mountpoint, &run_dir, &raw("install-db"))?;
    let server = Server::start(&node.mountpoint, &run_dir, args)?;
    let rows = load(&server, size_mib, progress)?;
    server.kill()?;
    mount.crash()?;
    let mut runs = Vec::new();
    for iteration in 1..=iterations {
        process::check_interrupted()?;
        node.wipe_cache()?;
        let page_cache_dropped = drop_page_cache();
        let started = Instant::now();
        let mount = node.mount().context("mounting a fresh node")?;
        let mounted = Instant::now();
        let mut server = Server::spawn(&node.mountpoint, &run_dir, args)?;
        server.wait_until_answering(FIRST_QUERY, Duration::from_secs(600))?;
        let answered = Instant::now();
        let fetched_first = fuse_ibd_status(&node.mountpoint, "remote_fetched_pages")?;
        check_full_scan(&server, rows)?;
        let scanned = Instant::now();
        let fetched_all = fuse_ibd_status(&node.mountpoint, "remote_fetched_pages")?;
        let crash_recovery = server.ran_crash_recovery();
        let data_mib = mebibytes(mariadb::directory_size(&node.mountpoint)?);
        // Lose this node too: the next iteration again starts from a crash.
        server.kill()?;
        mount.crash()?;
        let page_mib = |pages: u64| mebibytes(pages * 16384);
        let run = RecoveryRun {
            method: FRESH_NODE.to_string(),
            size_mib,
            iteration,
            data_mib,
            prepare_s: None,
            copy_back_s: None,
            mount_s: Some((mounted - started).as_secs_f64()),
            start_to_first_query_s: (answered - mounted).as_secs_f64(),
            total_s: (answered - started).as_secs_f64(),
            full_scan_s: (scanned - answered).as_secs_f64(),
            fetched_mib_first_query: Some(page_mib(fetched_first)),
            fetched_mib_full_scan: Some(page_mib(fetched_all)),
            crash_recovery,
            page_cache_dropped,
        };
        progress.step_done(
            &format!("{size_mib} MiB via {FRESH_NODE} (iteration {iteration}/{iterations})"),
            &format!(
                "{:.2} s (mount {:.2}, start {:.2}{}); full scan {:.2} s, {:.0} MiB fetched",
                run.total_s,
                run.mount_s.unwrap_or_default(),
                run.start_to_first_query_s,
                if crash_recovery { ", crash recovery" } else { "" },
                run.full_scan_s,
                run.fetched_mib_full_scan.unwrap_or_default()
            ),
        );
        runs.push(run);
    }
    Ok(runs)
}

fn mebibytes(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Runs the full scan and checks that every loaded row is back.
fn check_full_scan(server: &Server, rows: u64) -> Result<()> {
    let count = server.query(FULL_SCAN)?;
    if count.trim() != rows.to_string() {
        bail!(
            "the recovered table has {} rows, {rows} were loaded",
            count.trim()
        );
    }
    Ok(())
}

fn mariadb_backup(args: &[&str]) -> Command {
    let mut command = Command::new("mariadb-backup");
    command.arg("--no-defaults").args(args);
    command
}

/// Fills bench.recovery_data with about `size_mib` of rows, using the bundled Sequence engine;
/// returns the number of rows. Notes every tenth of a big load: 10 GiB take many minutes.
fn load(server: &Server, size_mib: u64, progress: &Progress) -> Result<u64> {
    server.query("CREATE DATABASE bench")?;
    server.query("CREATE TABLE bench.recovery_data (id BIGINT PRIMARY KEY, payload VARBINARY(4000) NOT NULL) ENGINE=InnoDB")?;
    let rows = (size_mib * 1024 * 1024 / ROW_BYTES).max(1);
    let mut first = 1;
    while first <= rows {
        process::check_interrupted()?;
        let last = (first + ROWS_PER_STATEMENT - 1).min(rows);
        // MD5 makes rows differ; REPEAT pads them to ROW_BYTES.
        let sql = format!(
            "INSERT INTO bench.recovery_data SELECT seq, REPEAT(MD5(seq), {}) FROM bench.seq_{first}_to_{last}",
            ROW_BYTES / 32
        );
        server.query(&sql).context("loading recovery data")?;
        let tenths = |row: u64| row * 10 / rows;
        if rows > 10 * ROWS_PER_STATEMENT && tenths(last) > tenths(first - 1) {
            progress.note(&format!("loaded {}% of {size_mib} MiB", tenths(last) * 10));
        }
        first = last + 1;
    }
    Ok(rows)
}

/// A byte-for-byte copy of a backup directory (untimed setup for each iteration).
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    let mut command = Command::new("cp");
    command.arg("-a").arg(from).arg(to);
    process::output(&mut command, "cp -a").map(drop)
}

/// Empties the page cache so the restore reads the backup (and the pageserver its segments)
/// from the disk, as after a real disk replacement; best effort, recorded per run.
fn drop_page_cache() -> bool {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(method: &str) -> RecoveryRun {
        let fresh = method == FRESH_NODE;
        RecoveryRun {
            method: method.to_string(),
            size_mib: 32,
            iteration: 1,
            data_mib: 200.0,
            prepare_s: (!fresh).then_some(0.3),
            copy_back_s: (!fresh).then_some(0.1),
            mount_s: fresh.then_some(0.05),
            start_to_first_query_s: 0.2,
            total_s: 0.6,
            full_scan_s: 1.5,
            fetched_mib_first_query: fresh.then_some(3.0),
            fetched_mib_full_scan: fresh.then_some(40.0),
            crash_recovery: fresh,
            page_cache_dropped: true,
        }
    }

    #[test]
    fn each_method_reports_its_own_phases() {
        let names = |run: RecoveryRun| -> Vec<String> { run.values().into_iter().map(|(n, _)| n).collect() };
        assert_eq!(
            names(run(BACKUP)),
            [
                "total s",
                "prepare s",
                "copy-back s",
                "start to first query s",
                "full scan s",
                "datadir MiB"
            ]
        );
        let fresh = names(run(FRESH_NODE));
        assert_eq!(fresh[0], "total s", "the headline is the same for both");
        assert!(fresh.contains(&"mount s".to_string()));
        assert!(fresh.contains(&"fetched MiB by scan end".to_string()));
        assert!(!fresh.contains(&"prepare s".to_string()));
    }
}
