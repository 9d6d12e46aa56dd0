//! Process-level tests against the real `pageserver-lite` binary.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{innodb_page, metric, Server};
use hyper::{Method, StatusCode};
use ibd_api::pageserver::{
    error_code, CreateFileRequest, CreateTimelineRequest, FileKind, PageAddr, PageUpload, PageserverClient,
    ReadAt, ReadPagesRequest, RecordMarkerRequest, BLOCK_SIZE,
};
use ibd_api::RetryPolicy;

const SPACE: u32 = 7;

/// Timeline `main`, term 1, one page file of space 7; returns the file id.
async fn setup(client: &PageserverClient) -> u64 {
    client
        .create_timeline(&CreateTimelineRequest {
            id: "main".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(client.acquire_term("main", None).await.unwrap().term, 1);
    client
        .create_file(
            "main",
            &CreateFileRequest {
                term: 1,
                path: "db/t1.ibd".into(),
                kind: FileKind::Page,
                size: 0,
                space_id: Some(SPACE),
            },
        )
        .await
        .unwrap()
        .id
}

fn page(file: u64, block: u64, version: u64) -> PageUpload {
    let lsn = 1000 * version + block;
    PageUpload::new(
        file,
        block,
        lsn,
        innodb_page(SPACE, block as u32, lsn, block * 1_000_003 + version),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_and_read_back_single_batched_by_space_and_versions() {
    let mut server = Server::start(&[]);
    let client = server.client();
    client.healthz().await.unwrap();
    let file = setup(&client).await;
    let batch: Vec<_> = (0..8).map(|b| page(file, b, 1)).collect();
    let put = client.put_pages("main", 1, &batch).await.unwrap();
    assert_eq!(put.count, 8);
    client.put_pages("main", 1, &[page(file, 0, 2)]).await.unwrap();

    let got = client
        .get_page("main", PageAddr::File { file, block: 3 }, ReadAt::Latest)
        .await
        .unwrap();
    assert_eq!(got.image, batch[3].image);
    assert_eq!(got.lsn, batch[3].lsn);
    let by_space = client
        .get_page(
            "main",
            PageAddr::Space {
                space: SPACE,
                page: 0,
            },
            ReadAt::Latest,
        )
        .await
        .unwrap();
    assert_eq!(by_space.image, page(file, 0, 2).image);
    let old = client
        .get_page(
            "main",
            PageAddr::Space {
                space: SPACE,
                page: 0,
            },
            ReadAt::Lsn(1500),
        )
        .await
        .unwrap();
    assert_eq!(old.image, batch[0].image);

    let pages: Vec<_> = (0..10).map(|b| PageAddr::File { file, block: b }).collect();
    let read = client
        .read_pages(
            "main",
            &ReadPagesRequest {
                at: ReadAt::Seq(put.last_seq),
                pages,
            },
        )
        .await
        .unwrap();
    for (b, p) in read.iter().enumerate().take(8) {
        assert_eq!(p.image, batch[b].image, "block {b}");
    }
    assert!(!read[9].found && read[9].image.len() == BLOCK_SIZE && read[9].image.iter().all(|&b| b == 0));

    let versions = client
        .page_versions("main", PageAddr::File { file, block: 0 }, 0, u64::MAX)
        .await
        .unwrap();
    assert_eq!(
        versions.iter().map(|v| v.lsn).collect::<Vec<_>>(),
        vec![1000, 2000]
    );
    assert_eq!(
        metric(&client, "pageserver_innodb_checksum_failures_total").await,
        0.0
    );
    assert!(metric(&client, "pageserver_http_request_duration_seconds_count").await > 0.0);

    // A clean stop writes the index snapshot; everything reads back after it.
    server.terminate();
    server.restart();
    let client = server.client();
    let got = client
        .get_page("main", PageAddr::File { file, block: 7 }, ReadAt::Latest)
        .await
        .unwrap();
    assert_eq!(got.image, batch[7].image);
}

/// Per block: the newest version acknowledged (with its seq) and the newest version sent.
#[derive(Default, Clone, Copy)]
struct Progress {
    acked: Option<(u64, u64)>,
    sent: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_uploads_loses_nothing_acknowledged() {
    let mut server = Server::start(&[]);
    let file = setup(&server.client()).await;
    let client = PageserverClient::with_retry(&server.url(), RetryPolicy::none()).unwrap();
    let progress: Arc<Mutex<HashMap<u64, Progress>>> = Default::default();
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let client = client.clone();
            let progress = progress.clone();
            tokio::spawn(async move {
                // Writer w owns blocks w*8 .. w*8+8 and uploads 4 of them per batch.
                for version in 1u64.. {
                    let blocks: Vec<u64> = (0..4).map(|i| w * 8 + (version * 4 + i) % 8).collect();
                    {
                        let mut p = progress.lock().unwrap();
                        for &b in &blocks {
                            p.entry(b).or_default().sent = version;
                        }
                    }
                    let batch: Vec<_> = blocks.iter().map(|&b| page(file, b, version)).collect();
                    let Ok(put) = client.put_pages("main", 1, &batch).await else {
                        return;
                    };
                    let mut p = progress.lock().unwrap();
                    for (i, &b) in blocks.iter().enumerate() {
                        p.get_mut(&b).unwrap().acked = Some((version, put.first_seq + i as u64));
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill();
    for w in writers {
        w.await.unwrap();
    }

    server.restart();
    let client = server.client();
    let progress = progress.lock().unwrap().clone();
    let acked = progress.values().filter(|p| p.acked.is_some()).count();
    assert!(
        acked >= 16,
        "only {acked} blocks were acknowledged before the kill"
    );
    for (&block, p) in &progress {
        let addr = PageAddr::File { file, block };
        // The client checks each page's CRC-32C: a half-written page would fail here.
        let latest = client.get_page("main", addr, ReadAt::Latest).await.unwrap();
        let Some((version, seq)) = p.acked else {
            assert!(!latest.found || latest.image == page(file, block, p.sent).image);
            continue;
        };
        assert!(
            latest.image == page(file, block, version).image
                || latest.image == page(file, block, p.sent).image,
            "block {block}: latest is neither acknowledged version {version} nor in-flight version {}",
            p.sent
        );
        let at_ack = client.get_page("main", addr, ReadAt::Seq(seq)).await.unwrap();
        assert_eq!(
            at_ack.image,
            page(file, block, version).image,
            "block {block} at seq {seq}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_sees_parent_pages_until_it_overwrites_them() {
    let server = Server::start(&[]);
    let client = server.client();
    let file = setup(&client).await;
    client
        .put_pages("main", 1, &[page(file, 0, 1), page(file, 1, 1)])
        .await
        .unwrap();
    let marker = client
        .record_marker(
            "main",
            &RecordMarkerRequest {
                term: 1,
                checkpoint_lsn: 1000,
                checkpoint_end_lsn: 1001,
                log_end_lsn_at_write: 1100,
                page_store_seq: None,
            },
        )
        .await
        .unwrap();
    client.put_pages("main", 1, &[page(file, 0, 2)]).await.unwrap();
    assert_eq!(client.list_markers("main").await.unwrap(), vec![marker]);

    let child = client
        .create_timeline(&CreateTimelineRequest {
            id: "pitr".into(),
            parent: Some("main".into()),
            branch_lsn: Some(1500),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(child.branch_seq, Some(marker.page_store_seq));
    let addr0 = PageAddr::File { file, block: 0 };
    let addr1 = PageAddr::File { file, block: 1 };
    assert_eq!(
        client
            .get_page("pitr", addr0, ReadAt::Latest)
            .await
            .unwrap()
            .image,
        page(file, 0, 1).image
    );

    assert_eq!(client.acquire_term("pitr", None).await.unwrap().term, 1);
    client.put_pages("pitr", 1, &[page(file, 1, 9)]).await.unwrap();
    assert_eq!(
        client
            .get_page("pitr", addr1, ReadAt::Latest)
            .await
            .unwrap()
            .image,
        page(file, 1, 9).image
    );
    assert_eq!(
        client
            .get_page("main", addr1, ReadAt::Latest)
            .await
            .unwrap()
            .image,
        page(file, 1, 1).image
    );
    let by_space = client
        .get_page(
            "pitr",
            PageAddr::Space {
                space: SPACE,
                page: 0,
            },
            ReadAt::Latest,
        )
        .await
        .unwrap();
    assert_eq!(by_space.image, page(file, 0, 1).image);
    assert_eq!(client.list_timelines().await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_term_and_a_bad_crc_are_refused_and_change_nothing() {
    let server = Server::start(&[]);
    let client = server.client();
    let file = setup(&client).await;
    client.put_pages("main", 1, &[page(file, 0, 1)]).await.unwrap();
    // A new writer takes over.
    assert_eq!(client.acquire_term("main", Some(5)).await.unwrap().term, 5);
    let err = client
        .put_pages("main", 1, &[page(file, 0, 2)])
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::CONFLICT));
    assert_eq!(err.code(), Some("stale_term"));
    let err = client.acquire_term("main", Some(3)).await.unwrap_err();
    assert_eq!(err.code(), Some("stale_term"));
    assert_eq!(
        client.acquire_term("main", Some(5)).await.unwrap().term,
        5,
        "a resend succeeds"
    );

    let mut bad = page(file, 1, 1);
    bad.crc32c ^= 0x10;
    let err = client
        .put_pages("main", 5, &[page(file, 0, 3), bad])
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST));
    assert_eq!(err.code(), Some("crc_mismatch"));

    let addr0 = PageAddr::File { file, block: 0 };
    assert_eq!(
        client
            .get_page("main", addr0, ReadAt::Latest)
            .await
            .unwrap()
            .image,
        page(file, 0, 1).image
    );
    assert!(
        !client
            .get_page("main", PageAddr::File { file, block: 1 }, ReadAt::Latest)
            .await
            .unwrap()
            .found
    );
    assert_eq!(metric(&client, "pageserver_stale_term_refusals_total").await, 2.0);
    assert_eq!(
        metric(&client, "pageserver_crc_mismatch_uploads_total").await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_json_4xx_and_change_nothing() {
    let server = Server::start(&[]);
    let client = server.client();
    let file = setup(&client).await;
    let before = client.timeline("main").await.unwrap();
    let http = client.http();
    let cases: Vec<(Method, String, &[u8], StatusCode, &str)> = vec![
        (Method::POST, "/v1/timelines/main/pages?term=1".into(), b"short", StatusCode::BAD_REQUEST, "bad_frame"),
        (Method::POST, "/v1/timelines/main/pages".into(), b"", StatusCode::BAD_REQUEST, "bad_request"),
        (Method::POST, "/v1/timelines/nope/pages?term=1".into(), b"", StatusCode::NOT_FOUND, "timeline_not_found"),
        (Method::POST, "/v1/timelines".into(), b"{not json", StatusCode::BAD_REQUEST, "bad_json"),
        (Method::POST, "/v1/timelines".into(), br#"{"id":"bad id!"}"#, StatusCode::BAD_REQUEST, "bad_request"),
        (Method::POST, "/v1/timelines".into(), br#"{"id":"main","parent":"x"}"#, StatusCode::NOT_FOUND, "timeline_not_found"),
        (Method::GET, format!("/v1/timelines/main/files/{file}/blocks/x"), b"", StatusCode::BAD_REQUEST, "bad_request"),
        (Method::GET, "/v1/timelines/main/files/999/blocks/0".into(), b"", StatusCode::NOT_FOUND, "file_not_found"),
        (Method::GET, format!("/v1/timelines/main/files/{file}/blocks/0?seq=1&lsn=1"), b"", StatusCode::BAD_REQUEST, "bad_request"),
        (Method::DELETE, "/v1/timelines/main".into(), b"", StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        (Method::GET, "/v2/anything".into(), b"", StatusCode::NOT_FOUND, "not_found"),
        (Method::POST, format!("/v1/timelines/main/files/{file}/unlink"), br#"{"term":9}"#, StatusCode::CONFLICT, "unknown_term"),
        (Method::POST, "/v1/timelines/main/markers".into(), br#"{"term":1,"checkpoint_lsn":1,"checkpoint_end_lsn":1,"log_end_lsn_at_write":1,"page_store_seq":99}"#, StatusCode::BAD_REQUEST, "bad_request"),
    ];
    for (method, path, body, status, code) in cases {
        let err = http
            .send(
                method.clone(),
                &path,
                Some("application/json"),
                bytes::Bytes::from_static(body),
            )
            .await
            .expect_err(&path);
        assert_eq!(err.status(), Some(status), "{method} {path}: {err}");
        assert_eq!(err.code(), Some(code), "{method} {path}: {err}");
    }
    let after = client.timeline("main").await.unwrap();
    assert_eq!(before, after);
    assert_eq!(client.list_timelines().await.unwrap().len(), 1);
    assert_eq!(client.list_files("main", ReadAt::Latest).await.unwrap().len(), 1);
    // Upload pages of a generic file: partial blocks are fine, LSN 0.
    let generic = client
        .create_file(
            "main",
            &CreateFileRequest {
                term: 1,
                path: "db/t1.frm".into(),
                kind: FileKind::Generic,
                size: 5,
                space_id: None,
            },
        )
        .await
        .unwrap();
    let frm = PageUpload::new(generic.id, 0, 0, bytes::Bytes::from_static(b"hello"));
    client.put_pages("main", 1, &[frm]).await.unwrap();
    let got = client
        .get_page(
            "main",
            PageAddr::File {
                file: generic.id,
                block: 0,
            },
            ReadAt::Latest,
        )
        .await
        .unwrap();
    assert_eq!(&got.image[..], b"hello");
}

/// Writes six pages, stops the server (SIGKILL, or SIGTERM which writes the index snapshot),
/// flips one byte of block 3's image inside its segment, restarts, and checks that the damage is
/// counted, block 3 is refused and the rest is served.
async fn corrupt_one_page_and_restart(clean_stop: bool) {
    let mut server = Server::start(&[]);
    let client = server.client();
    let file = setup(&client).await;
    let victim = page(file, 3, 1);
    let pages: Vec<_> = (0..6).map(|b| page(file, b, 1)).collect();
    client.put_pages("main", 1, &pages).await.unwrap();
    if clean_stop {
        server.terminate();
    } else {
        server.kill();
    }

    let seg_dir = server.data_dir().join("segments");
    let mut damaged = 0;
    for entry in std::fs::read_dir(&seg_dir).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        if let Some(at) = bytes.windows(BLOCK_SIZE).position(|w| w == &victim.image[..]) {
            bytes[at + BLOCK_SIZE / 2] ^= 0x01;
            std::fs::write(&path, &bytes).unwrap();
            damaged += 1;
        }
    }
    assert_eq!(damaged, 1);

    server.restart();
    let client = server.client();
    // Replayed segments are checked before the server listens; snapshot-covered ones right after.
    let mut waited = 0;
    while metric(&client, "pageserver_corrupt_records_total").await < 1.0 && waited < 100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    assert_eq!(metric(&client, "pageserver_corrupt_records_total").await, 1.0);
    let err = client
        .get_page("main", PageAddr::File { file, block: 3 }, ReadAt::Latest)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("corrupt_page"), "{err}");
    for b in [0, 1, 2, 4, 5] {
        let got = client
            .get_page("main", PageAddr::File { file, block: b }, ReadAt::Latest)
            .await
            .unwrap();
        assert_eq!(got.image, pages[b as usize].image);
    }
    assert!(server.log().contains("fails its CRC-32C"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_corrupted_on_disk_is_detected_at_start() {
    corrupt_one_page_and_restart(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_corrupted_after_a_clean_stop_is_found_by_the_start_up_scrub() {
    corrupt_one_page_and_restart(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_data_dir_or_port_is_refused_clearly() {
    let server = Server::start(&[]);
    let (status, stderr) = server.run_another(&["--listen", "127.0.0.1:0"]);
    assert!(!status.success());
    assert!(stderr.contains("in use by another pageserver-lite"), "{stderr}");

    let other = tempfile::tempdir().unwrap();
    let taken = server.url().trim_start_matches("http://").to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pageserver-lite"))
        .args(["--listen", &taken, "--data-dir"])
        .arg(other.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen on"));

    let not_a_dir = other.path().join("file");
    std::fs::write(&not_a_dir, b"x").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pageserver-lite"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&not_a_dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open the page store"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_branches_below_the_gc_horizon_are_410_gone() {
    let server = Server::start(&["--retention-secs", "0", "--maintenance-interval-ms", "50"]);
    let client = server.client();
    let file = setup(&client).await;
    let first = client.put_pages("main", 1, &[page(file, 0, 1)]).await.unwrap();
    client.put_pages("main", 1, &[page(file, 0, 2)]).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let info = loop {
        let info = client.timeline("main").await.unwrap();
        if info.gc_horizon_seq > 0 {
            break info;
        }
        assert!(std::time::Instant::now() < deadline, "GC never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((info.gc_horizon_seq, info.gc_horizon_lsn), (info.last_seq, 2000));

    let addr = PageAddr::File { file, block: 0 };
    let old = ReadAt::Seq(first.last_seq);
    let batched = ReadPagesRequest {
        at: old,
        pages: vec![addr],
    };
    let branch = CreateTimelineRequest {
        id: "old".into(),
        parent: Some("main".into()),
        branch_seq: Some(first.last_seq),
        ..Default::default()
    };
    let errors = [
        client.get_page("main", addr, old).await.unwrap_err(),
        client
            .get_page("main", addr, ReadAt::Lsn(1500))
            .await
            .unwrap_err(),
        client.read_pages("main", &batched).await.unwrap_err(),
        client.create_timeline(&branch).await.unwrap_err(),
    ];
    for err in errors {
        assert_eq!(err.status(), Some(StatusCode::GONE), "{err}");
        assert_eq!(err.code(), Some(error_code::BELOW_GC_HORIZON), "{err}");
        assert!(err.is_gone(), "{err}");
        assert!(err.to_string().contains("GC horizon"), "{err}");
    }
    let latest = client.get_page("main", addr, ReadAt::Latest).await.unwrap();
    assert_eq!(latest.image, page(file, 0, 2).image);
    assert_eq!(client.list_timelines().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_unique_and_rename_can_replace_in_one_change() {
    let mut server = Server::start(&[]);
    let client = server.client();
    let file = setup(&client).await; // db/t1.ibd
    let create = |path: &str| CreateFileRequest {
        term: 1,
        path: path.into(),
        kind: FileKind::Page,
        size: 0,
        space_id: None,
    };
    let err = client
        .create_file("main", &create("db/t1.ibd"))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::CONFLICT), "{err}");
    assert_eq!(err.code(), Some(error_code::PATH_EXISTS), "{err}");
    let tmp = client
        .create_file("main", &create("db/#sql-ib1.ibd"))
        .await
        .unwrap();
    client.put_pages("main", 1, &[page(tmp.id, 0, 5)]).await.unwrap();

    let err = client
        .rename_file("main", tmp.id, 1, "db/t1.ibd", false)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(error_code::PATH_EXISTS), "{err}");
    let before = client.timeline("main").await.unwrap().last_seq;
    let renamed = client
        .rename_file("main", tmp.id, 1, "db/t1.ibd", true)
        .await
        .unwrap();
    assert_eq!(
        (renamed.id, renamed.path.as_str(), renamed.seq),
        (tmp.id, "db/t1.ibd", before + 1)
    );
    server.kill();
    server.restart();
    let client = server.client();
    let files = client.list_files("main", ReadAt::Latest).await.unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!((files[0].id, files[0].path.as_str()), (tmp.id, "db/t1.ibd"));
    assert_eq!(
        client
            .list_files("main", ReadAt::Seq(before))
            .await
            .unwrap()
            .len(),
        2
    );
    let err = client
        .get_page("main", PageAddr::File { file, block: 0 }, ReadAt::Latest)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("file_not_found"), "{err}");
    let got = client
        .get_page(
            "main",
            PageAddr::File {
                file: tmp.id,
                block: 0,
            },
            ReadAt::Latest,
        )
        .await
        .unwrap();
    assert_eq!(got.image, page(tmp.id, 0, 5).image);
}
