//! Recovery to first query after losing the local disk. The baseline measured here restores a
//! local `mariadb-backup` copy: prepare + copy-back + start until a query on the data answers.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::mariadb::{self, Server};
use crate::process;
use crate::progress::Progress;
use crate::report::Sample;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecoverySettings {
    pub sizes_mib: Vec<u64>,
    pub buffer_pool_mib: u64,
    /// The query whose first success ends the clock: it reads a row, not just the catalogue.
    pub first_query: String,
    /// Filled in by the run: every server argument (identical to the sysbench servers').
    pub server_args: Vec<String>,
}

pub const FIRST_QUERY: &str = "SELECT LENGTH(payload) FROM bench.recovery_data WHERE id = 1";

/// Rows of ~4 KB: four per 16 KiB page, so the row count follows the wanted size simply.
const ROW_BYTES: u64 = 4000;
/// Rows per INSERT ... SELECT, small enough to keep each transaction's undo log modest.
const ROWS_PER_STATEMENT: u64 = 50_000;

/// The name in the "backend" column: the way the data comes back.
const METHOD: &str = "mariadb-backup";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecoveryRun {
    pub method: String,
    pub size_mib: u64,
    pub iteration: u32,
    /// Size of the restored datadir.
    pub data_mib: f64,
    pub prepare_s: f64,
    pub copy_back_s: f64,
    pub start_to_first_query_s: f64,
    pub total_s: f64,
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
        vec![
            ("total s".to_string(), self.total_s),
            ("prepare s".to_string(), self.prepare_s),
            ("copy-back s".to_string(), self.copy_back_s),
            ("start to first query s".to_string(), self.start_to_first_query_s),
            ("datadir MiB".to_string(), self.data_mib),
        ]
    }
}

/// For each size: load data on the local disk, back it up once, then `iterations` times wipe
/// the datadir and time the restore.
pub fn run_suite(
    settings: &mut RecoverySettings,
    iterations: u32,
    work: &Path,
    raw_dir: &Path,
) -> Result<Vec<RecoveryRun>> {
    std::fs::create_dir_all(raw_dir)?;
    let args = mariadb::server_args(settings.buffer_pool_mib);
    settings.server_args = args.clone();
    let mut progress = Progress::new("recovery", settings.sizes_mib.len() * iterations as usize);
    let mut runs = Vec::new();
    for &size_mib in &settings.sizes_mib {
        let dir = work.join(format!("recovery-{size_mib}"));
        let (datadir, backup, restore, run_dir) = (
            dir.join("data"),
            dir.join("backup"),
            dir.join("restore"),
            dir.join("run"),
        );
        progress.note(&format!("loading {size_mib} MiB and taking a backup"));
        let raw = |name: &str| raw_dir.join(format!("recovery-{size_mib}-{name}.log"));
        mariadb::install(&datadir, &run_dir, &raw("install-db"))?;
        let server = Server::start(&datadir, &run_dir, &args)?;
        load(&server, size_mib)?;
        let mut backup_command = mariadb_backup(&["--backup"]);
        backup_command.arg(format!("--target-dir={}", backup.display()));
        backup_command
            .arg(format!("--socket={}", server.socket().display()))
            .arg("--user=root");
        process::run_logged(
            &mut backup_command,
            "mariadb-backup --backup",
            &raw("backup"),
            Duration::from_secs(7200),
        )?;
        server.stop()?;
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
                Duration::from_secs(7200),
            )?;
            let prepared = Instant::now();
            let mut copy_back = mariadb_backup(&["--copy-back"]);
            copy_back.arg(format!("--target-dir={}", restore.display()));
            copy_back.arg(format!("--datadir={}", datadir.display()));
            process::run_logged(
                &mut copy_back,
                "mariadb-backup --copy-back",
                &raw("copy-back"),
                Duration::from_secs(7200),
            )?;
            let copied = Instant::now();
            let mut server = Server::spawn(&datadir, &run_dir, &args)?;
            server.wait_until_answering(FIRST_QUERY, Duration::from_secs(600))?;
            let answered = Instant::now();
            server.stop()?;
            let run = RecoveryRun {
                method: METHOD.to_string(),
                size_mib,
                iteration,
                data_mib: mariadb::directory_size(&datadir)? as f64 / (1024.0 * 1024.0),
                prepare_s: (prepared - started).as_secs_f64(),
                copy_back_s: (copied - prepared).as_secs_f64(),
                start_to_first_query_s: (answered - copied).as_secs_f64(),
                total_s: (answered - started).as_secs_f64(),
                page_cache_dropped,
            };
            progress.step_done(
                &format!("{size_mib} MiB via {METHOD} (iteration {iteration}/{iterations})"),
                &format!(
                    "{:.2} s (prepare {:.2}, copy-back {:.2}, start {:.2})",
                    run.total_s, run.prepare_s, run.copy_back_s, run.start_to_first_query_s
                ),
            );
            runs.push(run);
        }
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(runs)
}

fn mariadb_backup(args: &[&str]) -> Command {
    let mut command = Command::new("mariadb-backup");
    command.arg("--no-defaults").args(args);
    command
}

/// Fills bench.recovery_data with about `size_mib` of rows, using the bundled Sequence engine.
fn load(server: &Server, size_mib: u64) -> Result<()> {
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
        first = last + 1;
    }
    Ok(())
}

/// A byte-for-byte copy of a backup directory (untimed setup for each iteration).
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    let mut command = Command::new("cp");
    command.arg("-a").arg(from).arg(to);
    process::output(&mut command, "cp -a").map(drop)
}

/// Empties the page cache so the restore reads the backup from the disk, as after a real
/// disk replacement; best effort, recorded per run.
fn drop_page_cache() -> bool {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}
