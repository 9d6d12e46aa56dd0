//! Pageserver micro-benchmark on loopback against the real binary, cache-resident working set:
//! GetPage latency (p50/p99/mean) with 2 concurrent clients, batched PutPages MB/s.
//!
//! `cargo bench -p pageserver-lite`; prints the numbers and writes
//! `<target>/bench-results/pageserver-getpage.json`. Targets: GetPage p50 <= 100 us, p99 <= 500 us
//! (Neon's pagebench reports mean 0.22 ms, p99 0.75 ms).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ibd_api::pageserver::{CreateFileRequest, CreateTimelineRequest, FileKind, PageAddr, PageUpload, ReadAt};

const WORKING_SET_PAGES: u64 = 4096; // 64 MiB
const PAGES_PER_BATCH: u64 = 64; // 1 MiB uploads
const CLIENTS: u64 = 2;
const WARMUP_READS: usize = 2_000;
const READS_PER_CLIENT: usize = 20_000;

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this as a test with no args.
    if !std::env::args().any(|a| a == "--bench") {
        println!("pageserver getpage bench: run with `cargo bench -p pageserver-lite`");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    // The machine is shared: record how busy it was, the tail latencies depend on it.
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let loadavg_1m: f64 = loadavg
        .split_whitespace()
        .next()
        .and_then(|l| l.parse().ok())
        .unwrap_or(-1.0);
    let server = common::Server::start(&["--maintenance-interval-ms", "0"]);
    let client = server.client();
    client
        .create_timeline(&CreateTimelineRequest {
            id: "bench".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let term = client.acquire_term("bench", None).await.unwrap().term;
    let file = client
        .create_file(
            "bench",
            &CreateFileRequest {
                term,
                path: "bench/t.ibd".into(),
                kind: FileKind::Page,
                size: WORKING_SET_PAGES * 16384,
                space_id: Some(5),
            },
        )
        .await
        .unwrap()
        .id;

    // PutPages: CLIENTS uploaders, each its half of the working set in 1 MiB batches.
    let started = Instant::now();
    let uploaders: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let client = client.clone();
            tokio::spawn(async move {
                let mine: Vec<u64> = (0..WORKING_SET_PAGES).filter(|b| b % CLIENTS == c).collect();
                for chunk in mine.chunks(PAGES_PER_BATCH as usize) {
                    let batch: Vec<_> = chunk
                        .iter()
                        .map(|&b| PageUpload::new(file, b, b + 1, common::innodb_page(5, b as u32, b + 1, b)))
                        .collect();
                    client.put_pages("bench", term, &batch).await.unwrap();
                }
            })
        })
        .collect();
    for u in uploaders {
        u.await.unwrap();
    }
    let put_secs = started.elapsed().as_secs_f64();
    let put_mb_s = (WORKING_SET_PAGES * 16384) as f64 / 1e6 / put_secs;

    // GetPage: CLIENTS readers, each serially, uniformly random pages of the working set.
    let readers: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut x = 0x2545_F491_4F6C_DD1D_u64 ^ (c + 1);
                let mut lat = Vec::with_capacity(READS_PER_CLIENT);
                for i in 0..WARMUP_READS + READS_PER_CLIENT {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let addr = PageAddr::File {
                        file,
                        block: x % WORKING_SET_PAGES,
                    };
                    let t = Instant::now();
                    let page = client.get_page("bench", addr, ReadAt::Latest).await.unwrap();
                    let elapsed = t.elapsed();
                    assert!(page.found);
                    if i >= WARMUP_READS {
                        lat.push(elapsed);
                    }
                }
                lat
            })
        })
        .collect();
    let started = Instant::now();
    let mut latencies = Vec::new();
    for r in readers {
        latencies.extend(r.await.unwrap());
    }
    let get_secs = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    let mean = latencies.iter().sum::<Duration>() / latencies.len() as u32;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let result = serde_json::json!({
        "clients": CLIENTS,
        "working_set_pages": WORKING_SET_PAGES,
        "getpage": {
            "requests": latencies.len(),
            "p50_us": us(pct(0.50)),
            "p99_us": us(pct(0.99)),
            "p999_us": us(pct(0.999)),
            "mean_us": us(mean),
            "requests_per_s": latencies.len() as f64 / get_secs,
        },
        "putpages": {
            "pages_per_batch": PAGES_PER_BATCH,
            "mb_per_s": put_mb_s,
        },
        "targets": {"getpage_p50_us": 100, "getpage_p99_us": 500},
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "loadavg_1m_at_start": loadavg_1m,
    });
    println!(
        "GetPage ({CLIENTS} clients, {} reads): p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us, mean {:.0} us, {:.0} req/s",
        latencies.len(),
        us(pct(0.50)),
        us(pct(0.99)),
        us(pct(0.999)),
        us(mean),
        latencies.len() as f64 / get_secs
    );
    println!("PutPages ({CLIENTS} clients, {PAGES_PER_BATCH}-page batches): {put_mb_s:.0} MB/s");
    println!("(load average {loadavg_1m} on {} CPUs at start)", result["cpus"]);
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("bench-results");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("pageserver-getpage.json");
    std::fs::write(&out, serde_json::to_vec_pretty(&result).unwrap()).unwrap();
    println!("wrote {}", out.display());
}
