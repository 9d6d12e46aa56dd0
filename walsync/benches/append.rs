//! Commit-shaped appends against the real binary: one mtr of 200 B to 4 KiB, wait for the
//! durable acknowledgement, next; from 1 and from 8 concurrent writers. Compared with a bare
//! write + fdatasync loop (as many writers, a file each) in the same directory, in the same run:
//! the scenarios of each writer count take turns in short rounds, and the paired ratios are the
//! median over rounds of the scenario against the bare loop of the same round, so drift in what
//! else the machine and its disk are doing cancels out. Each walsync scenario writes the same
//! timelines for the whole run, as a compute node does, so commits land in segments that started
//! as zeroed files (see `walsync/src/storage/spare.rs`); a bare loop overwriting a zeroed file is
//! reported beside them as the least a WAL on this disk could cost. Prints a table and writes JSON
//! to `<target>/bench-results/walsync-append.json`.
//!
//! `cargo bench -p walsync` (set `WALSYNC_BENCH_SECS` to change the time per scenario, default 4).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ibd_api::walsync::WalsyncClient;
use ibd_api::RetryPolicy;
use serde::Serialize;
use tokio::sync::Mutex;

// The test harness's process guard: starts the binary on a free port, kills it on drop.
#[allow(dead_code)]
#[path = "../tests/common/mod.rs"]
mod common;

const START_LSN: u64 = 12288;

#[derive(Debug, Serialize)]
struct Scenario {
    name: String,
    writers: usize,
    ops: usize,
    p50_us: f64,
    p99_us: f64,
    ops_per_sec: f64,
    mib_per_sec: f64,
    /// p50 over the p50 of the bare fdatasync loop with as many writers.
    p50_ratio_vs_fdatasync: f64,
    /// Median over rounds of this scenario's p50 over the bare loop's p50 in the same round:
    /// insensitive to the disk's speed drifting.
    p50_ratio_paired: Option<f64>,
    /// Throughput over that of the bare loop with as many writers.
    ops_ratio_vs_fdatasync: f64,
    /// Median over rounds of the throughput ratio in the same round.
    ops_ratio_paired: Option<f64>,
}

struct Samples {
    latencies: Vec<Duration>,
    bytes: u64,
    elapsed: Duration,
}

impl Samples {
    fn merge(parts: Vec<Samples>, elapsed: Duration) -> Self {
        let mut all = Samples {
            latencies: Vec::new(),
            bytes: 0,
            elapsed,
        };
        for p in parts {
            all.latencies.extend(p.latencies);
            all.bytes += p.bytes;
        }
        all
    }

    /// Samples of the same scenario taken in turns.
    fn concat(parts: Vec<Samples>) -> Self {
        let elapsed = parts.iter().map(|p| p.elapsed).sum();
        Self::merge(parts, elapsed)
    }

    fn scenario(mut self, name: &str, writers: usize, baseline: Option<&Scenario>) -> Scenario {
        assert!(!self.latencies.is_empty(), "{name}: no samples");
        self.latencies.sort_unstable();
        let pct = |p: f64| {
            let i = ((self.latencies.len() as f64 * p) as usize).min(self.latencies.len() - 1);
            self.latencies[i].as_secs_f64() * 1e6
        };
        let secs = self.elapsed.as_secs_f64();
        let p50 = pct(0.50);
        Scenario {
            name: name.to_string(),
            writers,
            ops: self.latencies.len(),
            p50_us: p50,
            p99_us: pct(0.99),
            ops_per_sec: self.latencies.len() as f64 / secs,
            mib_per_sec: self.bytes as f64 / secs / (1 << 20) as f64,
            p50_ratio_vs_fdatasync: baseline.map_or(1.0, |b| p50 / b.p50_us),
            p50_ratio_paired: None,
            ops_ratio_vs_fdatasync: baseline
                .map_or(1.0, |b| self.latencies.len() as f64 / secs / b.ops_per_sec),
            ops_ratio_paired: None,
        }
    }

    fn ops_per_sec(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }
}

fn p50(latencies: &[Duration]) -> Duration {
    let mut sorted = latencies.to_vec();
    sorted.sort_unstable();
    sorted[sorted.len() / 2]
}

/// Median over rounds of `ratio(scenario's round, bare loop's round)`.
fn paired(
    rounds: &[Samples],
    bare_rounds: &[Samples],
    ratio: impl Fn(&Samples, &Samples) -> f64,
) -> Option<f64> {
    let mut ratios: Vec<f64> = rounds
        .iter()
        .zip(bare_rounds)
        // A round can be empty when one setup step outlasted the whole slice (a disk stall).
        .filter(|(r, b)| !r.latencies.is_empty() && !b.latencies.is_empty())
        .map(|(r, b)| ratio(r, b))
        .collect();
    ratios.sort_by(f64::total_cmp);
    ratios.get(ratios.len() / 2).copied()
}

/// Summarizes scenarios that took turns with a bare loop of as many writers, with paired ratios.
fn summarize(
    writers: usize,
    (bare_name, bare_rounds): (&str, Vec<Samples>),
    others: Vec<(&str, Vec<Samples>)>,
) -> Vec<Scenario> {
    let p50_ratio =
        |r: &Samples, b: &Samples| p50(&r.latencies).as_secs_f64() / p50(&b.latencies).as_secs_f64();
    let ops_ratio = |r: &Samples, b: &Samples| r.ops_per_sec() / b.ops_per_sec();
    let pairs: Vec<_> = others
        .iter()
        .map(|(_, rounds)| {
            (
                paired(rounds, &bare_rounds, p50_ratio),
                paired(rounds, &bare_rounds, ops_ratio),
            )
        })
        .collect();
    let bare = Samples::concat(bare_rounds).scenario(bare_name, writers, None);
    let mut results = Vec::new();
    for ((name, rounds), (p50_paired, ops_paired)) in others.into_iter().zip(pairs) {
        let mut scenario = Samples::concat(rounds).scenario(name, writers, Some(&bare));
        scenario.p50_ratio_paired = p50_paired;
        scenario.ops_ratio_paired = ops_paired;
        results.push(scenario);
    }
    results.insert(0, bare);
    results
}

/// Commit sizes: a fixed pseudo-random sequence in 200..=4096 bytes.
struct Sizes(u64);

impl Sizes {
    fn next(&mut self) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        200 + ((self.0 >> 33) % 3897) as usize
    }
}

fn bare_fdatasync_loop(dir: &Path, seed: u64, duration: Duration) -> Samples {
    let path = dir.join(format!("bare-{seed}.bin"));
    let file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&path)
        .unwrap();
    let samples = write_and_sync(&file, seed, 0, u64::MAX, duration).0;
    std::fs::remove_file(path).unwrap();
    samples
}

/// A file of zeros that [`write_and_sync`] overwrites from `offset` on, round after round (from
/// the start again when it is full), the way walsync writes a segment that started as a spare.
struct ZeroedFile {
    file: std::fs::File,
    offset: u64,
}

impl ZeroedFile {
    const SIZE: u64 = 64 << 20;

    fn create(dir: &Path) -> Self {
        let path = dir.join("zeroed.bin");
        let mut file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..Self::SIZE / zeros.len() as u64 {
            file.write_all(&zeros).unwrap();
        }
        file.sync_data().unwrap();
        Self { file, offset: 0 }
    }

    fn run(&mut self, duration: Duration) -> Samples {
        let (samples, offset) = write_and_sync(&self.file, 5, self.offset, Self::SIZE, duration);
        self.offset = offset;
        samples
    }
}

/// Commit-sized writes at `offset` on, each followed by fdatasync, for `duration`; wraps to 0
/// before passing `limit`. Returns the samples and where the next write goes.
fn write_and_sync(
    file: &std::fs::File,
    seed: u64,
    mut offset: u64,
    limit: u64,
    duration: Duration,
) -> (Samples, u64) {
    use std::os::unix::fs::FileExt;
    let buf = vec![0x5au8; 4096 + 16];
    let samples = timed_commits(seed, duration, |len| {
        // Same bytes as walsync writes: the record header plus the chunk.
        if offset + (len + 16) as u64 > limit {
            offset = 0;
        }
        file.write_all_at(&buf[..len + 16], offset).unwrap();
        file.sync_data().unwrap();
        offset += (len + 16) as u64;
    });
    (samples, offset)
}

/// Commits of [`Sizes`] lengths, each made and timed by `commit(len)`, until `duration` passed.
fn timed_commits(seed: u64, duration: Duration, mut commit: impl FnMut(usize)) -> Samples {
    let mut sizes = Sizes(seed);
    let mut samples = Samples {
        latencies: Vec::new(),
        bytes: 0,
        elapsed: duration,
    };
    let started = Instant::now();
    while started.elapsed() < duration {
        let len = sizes.next();
        let t = Instant::now();
        commit(len);
        samples.latencies.push(t.elapsed());
        samples.bytes += len as u64;
    }
    samples
}

/// The least any WAL service in another process could cost: each commit goes over loopback TCP to
/// a thread that writes it, fdatasyncs and answers, with blocking sockets (no walsync, no HTTP,
/// no async runtime). Tells the machine's wake-up and network costs apart from walsync's own.
fn tcp_floor(dir: &Path, duration: Duration) -> Samples {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let path = dir.join("floor.bin");
    let server_path = path.clone();
    let server = std::thread::spawn(move || {
        let (mut sock, _) = listener.accept().unwrap();
        sock.set_nodelay(true).unwrap();
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&server_path)
            .unwrap();
        let mut buf = vec![0u8; 4096 + 16];
        loop {
            let mut len = [0u8; 4];
            if sock.read_exact(&mut len).is_err() {
                return;
            }
            let len = u32::from_le_bytes(len) as usize;
            sock.read_exact(&mut buf[16..16 + len]).unwrap();
            file.write_all(&buf[..16 + len]).unwrap();
            file.sync_data().unwrap();
            sock.write_all(&[b'\n'; 20]).unwrap();
        }
    });
    let mut sock = std::net::TcpStream::connect(addr).unwrap();
    sock.set_nodelay(true).unwrap();
    let mut message = vec![0x42u8; 4 + 4096];
    let mut answer = [0u8; 20];
    let samples = timed_commits(11, duration, |len| {
        message[..4].copy_from_slice(&(len as u32).to_le_bytes());
        sock.write_all(&message[..4 + len]).unwrap();
        sock.read_exact(&mut answer).unwrap();
    });
    drop(sock);
    server.join().unwrap();
    std::fs::remove_file(path).unwrap();
    samples
}

fn bare_concurrent(dir: &Path, writers: usize, duration: Duration) -> Samples {
    let started = Instant::now();
    let parts = std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|w| s.spawn(move || bare_fdatasync_loop(dir, w as u64 + 1, duration)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    Samples::merge(parts, started.elapsed())
}

/// A timeline on the server that a scenario writes for the whole run: each round goes on where
/// the last one ended.
struct ServedTimeline {
    name: String,
    term: u64,
    next_lsn: u64,
}

impl ServedTimeline {
    async fn create(client: &WalsyncClient, name: String) -> Self {
        let term = client.acquire_term(&name, None).await.unwrap().term;
        Self {
            name,
            term,
            next_lsn: START_LSN,
        }
    }
}

/// One writer per timeline, a plain append request per commit.
async fn plain_appends(
    client: &WalsyncClient,
    timelines: &mut [ServedTimeline],
    duration: Duration,
) -> Samples {
    let started = Instant::now();
    let tasks: Vec<_> = timelines
        .iter()
        .enumerate()
        .map(|(w, tl)| {
            let client = client.clone();
            let (name, term, mut lsn) = (tl.name.clone(), tl.term, tl.next_lsn);
            tokio::spawn(async move {
                let mut sizes = Sizes(w as u64 + 7);
                let mut samples = Samples {
                    latencies: Vec::new(),
                    bytes: 0,
                    elapsed: duration,
                };
                let data = vec![0xa5u8; 4096];
                while started.elapsed() < duration {
                    let len = sizes.next();
                    let t = Instant::now();
                    let chunk = bytes::Bytes::copy_from_slice(&data[..len]);
                    client.append(&name, term, lsn, chunk).await.unwrap();
                    samples.latencies.push(t.elapsed());
                    samples.bytes += len as u64;
                    lsn += len as u64;
                }
                (samples, lsn)
            })
        })
        .collect();
    let mut parts = Vec::new();
    for (t, tl) in tasks.into_iter().zip(timelines) {
        let (samples, lsn) = t.await.unwrap();
        tl.next_lsn = lsn;
        parts.push(samples);
    }
    Samples::merge(parts, started.elapsed())
}

/// `writers` tasks committing on one timeline through one shared append stream, the way
/// concurrent fdatasyncs of `ib_logfile0` would: each takes the next LSN range in order, sends,
/// and waits for its own acknowledgement, so commits in flight share an fdatasync.
async fn shared_stream(
    client: &WalsyncClient,
    tl: &mut ServedTimeline,
    writers: usize,
    duration: Duration,
) -> Samples {
    let stream = Arc::new(client.open_stream(&tl.name, tl.term).await.unwrap());
    let next_lsn = Arc::new(Mutex::new(tl.next_lsn));
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let stream = stream.clone();
            let next_lsn = next_lsn.clone();
            tokio::spawn(async move {
                let mut sizes = Sizes(w as u64 + 100);
                let data = vec![0x3cu8; 4096];
                let mut samples = Samples {
                    latencies: Vec::new(),
                    bytes: 0,
                    elapsed: duration,
                };
                while started.elapsed() < duration {
                    let len = sizes.next();
                    let t = Instant::now();
                    let end = {
                        let mut lsn = next_lsn.lock().await;
                        stream.send(*lsn, &data[..len]).await.unwrap();
                        *lsn += len as u64;
                        *lsn
                    };
                    stream.wait_durable(end).await.unwrap();
                    samples.latencies.push(t.elapsed());
                    samples.bytes += len as u64;
                }
                samples
            })
        })
        .collect();
    let mut parts = Vec::new();
    for t in tasks {
        parts.push(t.await.unwrap());
    }
    tl.next_lsn = *next_lsn.lock().await;
    Samples::merge(parts, started.elapsed())
}

/// The storage core alone (timeline writer, group commit, fdatasync), no HTTP: splits the
/// overhead over a bare fdatasync between storage and transport. One timeline for the whole run.
struct InProcess {
    tl: Arc<walsync::timeline::Timeline>,
    term: u64,
    next_lsn: u64,
}

impl InProcess {
    fn open(dir: &Path) -> Self {
        use walsync::storage::checkpoints::CheckpointLog;
        use walsync::storage::meta::TimelineMeta;
        use walsync::timeline::{Timeline, TimelineConfig};

        let tl_dir = dir.join("core");
        std::fs::create_dir_all(&tl_dir).unwrap();
        TimelineMeta::new("core", None).store(&tl_dir).unwrap();
        CheckpointLog::create(&tl_dir, &[]).unwrap();
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = walsync::metrics::Metrics::register(&mut registry);
        let config = TimelineConfig {
            segment_size: 16 << 20,
        };
        let tl = Timeline::open(&tl_dir, None, &config, &metrics).unwrap();
        let term = tl.acquire_term(None).unwrap().term;
        Self {
            tl,
            term,
            next_lsn: START_LSN,
        }
    }

    fn run(&mut self, duration: Duration) -> Samples {
        let data = vec![0x77u8; 4096];
        timed_commits(3, duration, |len| {
            self.tl.append(self.term, self.next_lsn, &data[..len]).unwrap();
            self.next_lsn += len as u64;
        })
    }
}

/// The workspace's target directory: results go there, and so does the data (a real disk, where
/// `/tmp` may be a tmpfs on which fdatasync costs nothing).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this with no such flag: skip.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let secs: f64 = std::env::var("WALSYNC_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4.0);
    let duration = Duration::from_secs_f64(secs);
    let base = target_dir();
    std::fs::create_dir_all(&base).unwrap();
    let tmp = tempfile::tempdir_in(&base).unwrap();
    let data_dir = tmp.path().join("data");
    let server = common::Walsync::start(&data_dir, &[]);
    let client = server.client().with_retry(RetryPolicy::none());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    let mut zeroed = ZeroedFile::create(&data_dir);
    let mut core = InProcess::open(tmp.path());
    let served = |name: String| runtime.block_on(ServedTimeline::create(&client, name));
    let mut plain1 = vec![served("plain1".into())];
    let mut stream1 = served("stream1".into());
    let mut plain8: Vec<_> = (0..8).map(|w| served(format!("plain8-{w}"))).collect();
    let mut stream8 = served("stream8".into());
    // Each new timeline writes the zeroed file its first segment starts as (about 30 ms each).
    std::thread::sleep(Duration::from_secs(2));

    // The scenarios of each writer count take turns in short rounds, so that drift in what else
    // the machine and its disk are doing hits them alike.
    const ROUNDS: u32 = 20;
    let slice = duration / ROUNDS;
    // Each round starts with the next scenario, so none always follows the same other one.
    let mut single: [Vec<Samples>; 6] = Default::default();
    for round in 0..ROUNDS {
        for k in 0..single.len() {
            let which = (round as usize + k) % single.len();
            single[which].push(match which {
                0 => bare_concurrent(&data_dir, 1, slice),
                1 => zeroed.run(slice),
                2 => tcp_floor(&data_dir, slice),
                3 => core.run(slice),
                4 => runtime.block_on(plain_appends(&client, &mut plain1, slice)),
                _ => runtime.block_on(shared_stream(&client, &mut stream1, 1, slice)),
            });
        }
    }
    let [bare, zeroed, floor, core, plain, stream] = single;
    let mut results = summarize(
        1,
        ("bare write+fdatasync (appending)", bare),
        vec![
            ("bare write+fdatasync over a zeroed file", zeroed),
            ("floor: loopback TCP + write+fdatasync", floor),
            ("walsync core in-process (no HTTP)", core),
            ("walsync plain append", plain),
            ("walsync stream", stream),
        ],
    );
    let mut eight: [Vec<Samples>; 3] = Default::default();
    for round in 0..ROUNDS {
        for k in 0..eight.len() {
            let which = (round as usize + k) % eight.len();
            eight[which].push(match which {
                0 => bare_concurrent(&data_dir, 8, slice),
                1 => runtime.block_on(plain_appends(&client, &mut plain8, slice)),
                _ => runtime.block_on(shared_stream(&client, &mut stream8, 8, slice)),
            });
        }
    }
    let [bare8, plain8, stream8] = eight;
    results.extend(summarize(
        8,
        ("bare write+fdatasync (file per writer)", bare8),
        vec![
            ("walsync plain append (timeline per writer)", plain8),
            ("walsync stream (one timeline, shared)", stream8),
        ],
    ));

    println!(
        "{:<45} {:>7} {:>7} {:>8} {:>8} {:>8} {:>6} {:>8} {:>6} {:>8}",
        "scenario", "writers", "ops", "p50 us", "p99 us", "ops/s", "p50 x", "paired", "ops x", "paired"
    );
    let ratio = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.2}"));
    for r in &results {
        println!(
            "{:<45} {:>7} {:>7} {:>8.0} {:>8.0} {:>8.0} {:>6.2} {:>8} {:>6.2} {:>8}",
            r.name,
            r.writers,
            r.ops,
            r.p50_us,
            r.p99_us,
            r.ops_per_sec,
            r.p50_ratio_vs_fdatasync,
            ratio(r.p50_ratio_paired),
            r.ops_ratio_vs_fdatasync,
            ratio(r.ops_ratio_paired),
        );
    }
    let path = target_dir().join("bench-results").join("walsync-append.json");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at the end: {}", load.trim());
    let json = serde_json::json!({
        "benchmark": "walsync-append",
        "seconds_per_scenario": secs,
        "loadavg_at_end": load.trim(),
        "data_dir": base.display().to_string(),
        "scenarios": results,
    });
    std::fs::write(&path, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    println!("wrote {}", path.display());
}
