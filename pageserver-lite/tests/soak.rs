//! Soak: a small working set overwritten many times with background GC and compaction on; disk
//! usage must stay bounded while the data stays right.

mod common;

use std::time::Duration;

use common::{dir_bytes, innodb_page, metric, Server};
use ibd_api::pageserver::{CreateFileRequest, CreateTimelineRequest, FileKind, PageAddr, PageUpload, ReadAt};

const WORKING_SET: u64 = 32; // 512 KiB
const ROUNDS: u64 = 150;
const WRITERS: u64 = 2;

fn page(file: u64, block: u64, round: u64) -> PageUpload {
    PageUpload::new(
        file,
        block,
        round + 1,
        innodb_page(1, block as u32, round + 1, round * 1000 + block),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwriting_a_small_working_set_keeps_disk_usage_bounded() {
    let server = Server::start(&[
        "--segment-size-kib",
        "256",
        "--retention-secs",
        "0",
        "--maintenance-interval-ms",
        "50",
        "--snapshot-interval-secs",
        "1",
    ]);
    let client = server.client();
    client
        .create_timeline(&CreateTimelineRequest {
            id: "main".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    client.acquire_term("main", None).await.unwrap();
    let file = client
        .create_file(
            "main",
            &CreateFileRequest {
                term: 1,
                path: "db/hot.ibd".into(),
                kind: FileKind::Page,
                size: WORKING_SET * 16384,
                space_id: Some(1),
            },
        )
        .await
        .unwrap()
        .id;

    let data_dir = server.data_dir();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let client = client.clone();
            let data_dir = data_dir.clone();
            tokio::spawn(async move {
                let mut max_bytes = 0;
                for round in 0..ROUNDS {
                    let batch: Vec<_> = (0..WORKING_SET)
                        .filter(|b| b % WRITERS == w)
                        .map(|b| page(file, b, round))
                        .collect();
                    client.put_pages("main", 1, &batch).await.unwrap();
                    if round % 10 == 0 {
                        max_bytes = max_bytes.max(dir_bytes(&data_dir));
                    }
                }
                max_bytes
            })
        })
        .collect();
    let mut max_bytes = 0;
    for w in writers {
        max_bytes = max_bytes.max(w.await.unwrap());
    }
    let written = ROUNDS * WORKING_SET * 16384;
    // Let background compaction catch up with the last writes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let settled = dir_bytes(&data_dir);
    let working_set_bytes = WORKING_SET * 16384;
    eprintln!("wrote {written} bytes; disk usage peak {max_bytes}, settled {settled}");
    assert!(
        max_bytes < written / 4,
        "peak disk usage {max_bytes} bytes while writing {written}"
    );
    assert!(
        settled < 4 * working_set_bytes + 2 * 256 * 1024,
        "{settled} bytes on disk after writing {written} (working set {working_set_bytes})"
    );
    assert!(metric(&client, "pageserver_compactions_total").await > 0.0);
    assert!(metric(&client, "pageserver_gc_versions_dropped_total").await > 0.0);
    for b in 0..WORKING_SET {
        let got = client
            .get_page("main", PageAddr::File { file, block: b }, ReadAt::Latest)
            .await
            .unwrap();
        assert_eq!(got.image, page(file, b, ROUNDS - 1).image, "block {b}");
    }
}
