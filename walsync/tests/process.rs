//! Process-level tests against the real binary.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{byte_at, chunk, metric, scrape, Walsync};
use ibd_api::walsync::{BranchPoint, Checkpoint, CreateTimelineRequest, Geometry, WalsyncClient};

fn geometry(first_lsn: u64, at_lsn: u64) -> Geometry {
    Geometry {
        first_lsn,
        file_size: 96 << 20,
        creator: "MariaDB 10.11.19".into(),
        at_lsn,
    }
}

/// Appends `total` bytes of `chunk(seed, ..)` from `start` in `step`-byte appends.
async fn fill(
    client: &WalsyncClient,
    tl: &str,
    term: u64,
    seed: u64,
    start: u64,
    total: u64,
    step: u64,
) -> u64 {
    let mut lsn = start;
    while lsn < start + total {
        let len = step.min(start + total - lsn) as usize;
        let d = client
            .append(tl, term, lsn, chunk(seed, lsn, len).into())
            .await
            .unwrap();
        lsn += len as u64;
        assert_eq!(d.durable_lsn, lsn);
    }
    lsn
}

#[tokio::test]
async fn append_then_read_back_by_lsn() {
    let dir = tempfile::tempdir().unwrap();
    let ws = Walsync::start(&dir.path().join("data"), &["--segment-size", "1000"]);
    let c = ws.client();
    c.healthz().await.unwrap();
    let term = c.acquire_term("tl1", None).await.unwrap();
    assert_eq!((term.term, term.durable_lsn), (1, None));
    let end = fill(&c, "tl1", 1, 1, 12288, 5000, 333).await;
    assert_eq!(
        c.read_wal("tl1", 12288, end).await.unwrap(),
        chunk(1, 12288, 5000)
    );
    assert_eq!(
        c.read_wal("tl1", 13000, 13001).await.unwrap()[0],
        byte_at(1, 13000)
    );
    assert_eq!(c.read_wal("tl1", 14000, 14000).await.unwrap().len(), 0);
    let status = c.status("tl1").await.unwrap();
    assert_eq!(
        (status.wal_start_lsn, status.durable_lsn, status.term),
        (Some(12288), Some(end), 1)
    );
    let listed = c.list_timelines().await.unwrap();
    assert_eq!(listed.timelines.len(), 1);
}

#[tokio::test]
async fn gaps_conflicting_overlaps_and_bad_crcs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ws = Walsync::start(&dir.path().join("data"), &[]);
    let c = ws.client();
    c.acquire_term("tl", None).await.unwrap();
    let end = fill(&c, "tl", 1, 7, 1000, 300, 100).await;

    let gap = c
        .append("tl", 1, end + 1, Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert_eq!(
        (gap.status().map(|s| s.as_u16()), gap.code()),
        (Some(409), Some("gap"))
    );
    let mut wrong = chunk(7, 1100, 50);
    wrong[10] ^= 1;
    let mismatch = c.append("tl", 1, 1100, wrong.into()).await.unwrap_err();
    assert_eq!(mismatch.code(), Some("overlap_mismatch"));
    assert!(mismatch.to_string().contains("1110"), "{mismatch}");

    // An exact resend is idempotent; a resend that extends past the end appends the new part.
    let again = c.append("tl", 1, 1100, chunk(7, 1100, 50).into()).await.unwrap();
    assert_eq!(again.durable_lsn, end);
    let extended = c
        .append("tl", 1, end - 20, chunk(7, end - 20, 50).into())
        .await
        .unwrap();
    assert_eq!(extended.durable_lsn, end + 30);
    assert_eq!(
        c.read_wal("tl", 1000, end + 30).await.unwrap(),
        chunk(7, 1000, 330)
    );

    // A body whose CRC does not match is refused and nothing is stored.
    let http = ibd_api::HttpClient::new(&ws.url, ibd_api::RetryPolicy::none()).unwrap();
    let path = format!(
        "/v1/timelines/tl/wal?term=1&start_lsn={}&crc32c=00000000",
        end + 30
    );
    let bad = http
        .post_bytes::<serde_json::Value>(&path, Bytes::from_static(b"abc"))
        .await
        .unwrap_err();
    assert_eq!(
        (bad.status().map(|s| s.as_u16()), bad.code()),
        (Some(400), Some("crc_mismatch"))
    );
    assert_eq!(c.status("tl").await.unwrap().durable_lsn, Some(end + 30));

    let beyond = c.read_wal("tl", 1000, end + 31).await.unwrap_err();
    assert_eq!(beyond.code(), Some("not_durable"));
    let missing = c.status("nope").await.unwrap_err();
    assert_eq!(
        (missing.status().map(|s| s.as_u16()), missing.code()),
        (Some(404), Some("not_found"))
    );
    let bad_id = c.acquire_term("bad.id", None).await.unwrap_err();
    assert_eq!(bad_id.code(), Some("bad_request"));
}

#[tokio::test]
async fn terms_cannot_overflow_and_checkpoints_cannot_run_ahead_of_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let ws = Walsync::start(&dir.path().join("data"), &[]);
    let c = ws.client();
    let bad_request =
        |err: ibd_api::ClientError| (err.status().map(|s| s.as_u16()), err.code().map(str::to_owned));
    let refused = c.acquire_term("tl", Some(u64::MAX)).await.unwrap_err();
    assert_eq!(bad_request(refused), (Some(400), Some("bad_request".to_owned())));
    let term = c.acquire_term("tl", Some(i64::MAX as u64)).await.unwrap().term;
    // No successor is left: refused, and the current writer keeps writing.
    let exhausted = c.acquire_term("tl", None).await.unwrap_err();
    assert_eq!(
        bad_request(exhausted),
        (Some(400), Some("bad_request".to_owned()))
    );
    fill(&c, "tl", term, 3, 500, 100, 100).await;

    // A checkpoint whose FILE_CHECKPOINT mtr (at end_lsn) is not durable yet is refused.
    let ahead = Checkpoint {
        checkpoint_lsn: 550,
        end_lsn: 700,
    };
    let refused = c.add_checkpoint("tl", term, &ahead).await.unwrap_err();
    assert_eq!(bad_request(refused), (Some(400), Some("bad_request".to_owned())));
    let fine = Checkpoint {
        checkpoint_lsn: 550,
        end_lsn: 580,
    };
    c.add_checkpoint("tl", term, &fine).await.unwrap();
    assert_eq!(c.checkpoints("tl").await.unwrap().checkpoints.len(), 1);
}

#[tokio::test]
async fn stale_term_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ws = Walsync::start(&dir.path().join("data"), &[]);
    let c = ws.client();
    let old = c.acquire_term("tl", None).await.unwrap().term;
    fill(&c, "tl", old, 3, 500, 100, 100).await;
    let new = c.acquire_term("tl", None).await.unwrap();
    assert_eq!((new.term, new.durable_lsn), (old + 1, Some(600)));

    for err in [
        c.append("tl", old, 600, Bytes::from_static(b"zombie"))
            .await
            .unwrap_err(),
        c.add_checkpoint(
            "tl",
            old,
            &Checkpoint {
                checkpoint_lsn: 500,
                end_lsn: 500,
            },
        )
        .await
        .unwrap_err(),
        c.put_geometry("tl", old, &geometry(12288, 500))
            .await
            .unwrap_err(),
        c.open_stream("tl", old).await.unwrap_err(),
    ] {
        assert_eq!(
            (err.status().map(|s| s.as_u16()), err.code()),
            (Some(409), Some("stale_term"))
        );
    }
    let never_granted = c
        .append("tl", new.term + 5, 600, Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert_eq!(never_granted.code(), Some("unknown_term"));
    c.append("tl", new.term, 600, Bytes::from_static(b"ok"))
        .await
        .unwrap();

    // A proposed term (how a quorum client aligns nodes) must be newer than any granted.
    let lower = c.acquire_term("tl", Some(new.term)).await.unwrap_err();
    assert_eq!(lower.code(), Some("stale_term"));
    assert_eq!(c.acquire_term("tl", Some(10)).await.unwrap().term, 10);
}

#[tokio::test]
async fn stream_pipelines_frames_and_acks_durable_lsn() {
    let dir = tempfile::tempdir().unwrap();
    let ws = Walsync::start(&dir.path().join("data"), &["--segment-size", "65536"]);
    let c = ws.client();
    let term = c.acquire_term("tl", None).await.unwrap().term;
    let stream = c.open_stream("tl", term).await.unwrap();
    let mut lsn = 12288;
    for i in 0..300u64 {
        let len = 200 + (i * 37 % 4000) as usize;
        stream.send(lsn, &chunk(9, lsn, len)).await.unwrap();
        lsn += len as u64;
    }
    assert_eq!(stream.wait_durable(lsn).await.unwrap(), lsn);
    assert_eq!(stream.finish().await.unwrap(), Some(lsn));
    let total = (lsn - 12288) as usize;
    assert_eq!(
        c.read_wal("tl", 12288, lsn).await.unwrap(),
        chunk(9, 12288, total)
    );
    // Every frame was made durable by exactly one fdatasync (those sealing segments included),
    // and there was at least one. (How many frames shared one depends on how fast fdatasync is
    // against the client: see the burst below for sharing.)
    let text = scrape(&ws.url).await;
    assert_eq!(metric(&text, "walsync_fsync_batch_appends_sum"), 300.0);
    let fsyncs = metric(&text, "walsync_fsync_latency_seconds_count");
    assert!(
        (1.0..=300.0).contains(&fsyncs),
        "{fsyncs} fdatasyncs for 300 frames"
    );

    // 300 frames, each its own HTTP chunk, written in one go: they are in the socket together,
    // and hyper hands the server one chunk at a time: the stream must still take every frame
    // that has arrived into one group commit, however fast fdatasync is.
    let burst_term = c.acquire_term("burst", None).await.unwrap().term;
    let mut request = format!(
        "POST /v1/timelines/burst/wal/stream?term={burst_term} HTTP/1.1\r\nhost: walsync\r\n\
         transfer-encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    let mut burst_end = 12288;
    for i in 0..300u64 {
        let len = 100 + (i * 37 % 1000) as usize;
        let frame = ibd_api::walsync::encode_frame(burst_end, &chunk(3, burst_end, len));
        request.extend_from_slice(format!("{:x}\r\n", frame.len()).as_bytes());
        request.extend_from_slice(&frame);
        request.extend_from_slice(b"\r\n");
        burst_end += len as u64;
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let mut tcp = tokio::net::TcpStream::connect(ws.url.trim_start_matches("http://"))
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut tcp, &request)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while c.status("burst").await.unwrap().durable_lsn != Some(burst_end) {
        assert!(
            std::time::Instant::now() < deadline,
            "the burst was not made durable"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(tcp);
    let text = scrape(&ws.url).await;
    assert_eq!(metric(&text, "walsync_fsync_batch_appends_sum"), 600.0);
    let burst_fsyncs = metric(&text, "walsync_fsync_latency_seconds_count") - fsyncs;
    assert!(
        (1.0..=75.0).contains(&burst_fsyncs),
        "{burst_fsyncs} fdatasyncs for 300 frames that arrived together: frames were not batched"
    );

    // The first refused frame ends the stream with its error.
    let stream = c.open_stream("tl", term).await.unwrap();
    stream.send(lsn + 5, b"gap").await.unwrap();
    let err = stream.wait_durable(lsn + 8).await.unwrap_err();
    assert_eq!(
        (err.status().map(|s| s.as_u16()), err.code()),
        (Some(409), Some("gap"))
    );
    assert!(stream.send(lsn, b"after").await.is_err());
}

#[tokio::test]
async fn sigkill_during_appends_loses_no_acknowledged_byte() {
    let dir = tempfile::tempdir().unwrap();
    let mut ws = Walsync::start(&dir.path().join("data"), &["--segment-size", "20000"]);
    let timelines: [&'static str; 4] = ["k0", "k1", "k2", "k3"];
    let acked: Vec<Arc<AtomicU64>> = timelines.iter().map(|_| Arc::new(AtomicU64::new(0))).collect();
    for round in 0..3u64 {
        let c = ws.client();
        let mut writers = Vec::new();
        for (i, tl) in timelines.into_iter().enumerate() {
            let acked = acked[i].clone();
            let term = c.acquire_term(tl, None).await.unwrap();
            let mut lsn = term.durable_lsn.unwrap_or(100_000);
            assert!(lsn >= acked.load(Ordering::SeqCst), "durable LSN moved backwards");
            // Half the writers stream, half use plain appends (no retries: the server dies).
            let plain = c.with_retry(ibd_api::RetryPolicy::none());
            let mut stream = match i % 2 {
                0 => Some(c.open_stream(tl, term.term).await.unwrap()),
                _ => None,
            };
            writers.push(tokio::spawn(async move {
                loop {
                    let len = 200 + (lsn % 3000) as usize;
                    let data = chunk(i as u64, lsn, len);
                    let durable = match stream.as_mut() {
                        Some(stream) => match stream.send(lsn, &data).await {
                            Ok(()) => stream.wait_durable(lsn + len as u64).await,
                            Err(e) => Err(e),
                        },
                        None => plain
                            .append(tl, term.term, lsn, data.into())
                            .await
                            .map(|r| r.durable_lsn),
                    };
                    match durable {
                        Ok(d) => acked.fetch_max(d, Ordering::SeqCst),
                        Err(_) => return,
                    };
                    lsn += len as u64;
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(300 + 100 * round)).await;
        ws.kill_and_restart();
        for w in writers {
            w.await.unwrap();
        }
        let c = ws.client();
        for (i, tl) in timelines.iter().enumerate() {
            let status = c.status(tl).await.unwrap();
            let durable = status.durable_lsn.unwrap();
            let acked = acked[i].load(Ordering::SeqCst);
            assert!(durable >= acked, "{tl}: durable {durable} < acknowledged {acked}");
            assert!(acked > 100_000, "{tl}: nothing was acknowledged in round {round}");
            let bytes = c.read_wal(tl, 100_000, durable).await.unwrap();
            assert!(
                bytes == chunk(i as u64, 100_000, bytes.len()),
                "{tl}: WAL content differs after restart"
            );
        }
    }
}

/// A walsync SIGKILLed after appending three 1000-byte records from LSN 5000 to timeline "tl":
/// the service, the term, the end LSN and the segment file holding the records.
async fn killed_after_three_records(data: &std::path::Path) -> (Walsync, u64, u64, std::path::PathBuf) {
    let mut ws = Walsync::start(data, &[]);
    let c = ws.client();
    let term = c.acquire_term("tl", None).await.unwrap().term;
    let end = fill(&c, "tl", term, 8, 5000, 3000, 1000).await;
    ws.kill();
    let segment = data.join("timelines/tl/wal").join(format!("{:016x}.seg", 5000));
    (ws, term, end, segment)
}

/// Where the three records of [`killed_after_three_records`] end in their segment (which may go
/// on with zeros: segments start as zeroed files when one is ready).
const THREE_RECORDS_END: usize = 3000 + 3 * 16;

#[tokio::test]
async fn torn_tail_is_truncated_at_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (mut ws, term, end, segment) = killed_after_three_records(&dir.path().join("data")).await;
    // Half a record, as if the process died inside a write.
    let file = std::fs::OpenOptions::new().write(true).open(&segment).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[0x11; 23], THREE_RECORDS_END as u64).unwrap();
    ws.restart();
    let c = ws.client();
    assert_eq!(c.status("tl").await.unwrap().durable_lsn, Some(end));
    assert_eq!(
        std::fs::metadata(&segment).unwrap().len(),
        THREE_RECORDS_END as u64
    );
    fill(&c, "tl", term, 8, end, 500, 500).await;
    assert_eq!(
        c.read_wal("tl", 5000, end + 500).await.unwrap(),
        chunk(8, 5000, 3500)
    );
    let text = scrape(&ws.url).await;
    assert_eq!(metric(&text, "walsync_torn_tails_truncated_total"), 1.0);
    assert_eq!(metric(&text, "walsync_corrupt_wal_found_total"), 0.0);
}

#[tokio::test]
async fn a_rotted_acknowledged_last_record_is_reported_not_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let (mut ws, term, end, segment) = killed_after_three_records(&dir.path().join("data")).await;
    // One bit of the last record's payload flips: the record is all there, its CRC fails. It was
    // acknowledged (so synced): corruption, not a torn write.
    let mut bytes = std::fs::read(&segment).unwrap();
    let len = bytes.len();
    bytes[THREE_RECORDS_END - 10] ^= 0x04;
    std::fs::write(&segment, &bytes).unwrap();
    ws.restart();
    let c = ws.client();
    assert_eq!(
        std::fs::metadata(&segment).unwrap().len(),
        len as u64,
        "nothing was cut"
    );
    assert_eq!(c.status("tl").await.unwrap().durable_lsn, Some(end));
    let err = c.read_wal("tl", 7500, end).await.unwrap_err();
    assert_eq!(
        (err.status().map(|s| s.as_u16()), err.code()),
        (Some(500), Some("wal_corrupt")),
        "{err}"
    );
    assert_eq!(c.read_wal("tl", 5000, 7000).await.unwrap(), chunk(8, 5000, 2000));
    let text = scrape(&ws.url).await;
    assert_eq!(metric(&text, "walsync_corrupt_wal_found_total"), 1.0);
    assert_eq!(
        metric(&text, "walsync_corrupt_wal_bytes{timeline=\"tl\"}"),
        1000.0
    );
    assert_eq!(metric(&text, "walsync_torn_tails_truncated_total"), 0.0);
    // The WAL goes on after it.
    let end = fill(&c, "tl", term, 8, end, 500, 500).await;
    assert_eq!(
        c.read_wal("tl", end - 500, end).await.unwrap(),
        chunk(8, end - 500, 500)
    );
}

#[tokio::test]
async fn bit_rot_before_valid_records_is_reported_and_kept_not_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let (mut ws, term, end, segment) = killed_after_three_records(&dir.path().join("data")).await;
    // One bit of the middle record's payload flips on disk.
    let len = std::fs::metadata(&segment).unwrap().len();
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[1016 + 16 + 10] ^= 0x04;
    std::fs::write(&segment, &bytes).unwrap();
    ws.restart();
    let c = ws.client();

    // Nothing was cut: the WAL after the bad record is still durable and served.
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), len);
    assert_eq!(c.status("tl").await.unwrap().durable_lsn, Some(end));
    assert_eq!(c.read_wal("tl", 5000, 6000).await.unwrap(), chunk(8, 5000, 1000));
    assert_eq!(c.read_wal("tl", 7000, end).await.unwrap(), chunk(8, 7000, 1000));
    // The bad range is refused, loudly.
    for (from, to) in [(6000, 7000), (5500, 6001), (5000, end)] {
        let err = c.read_wal("tl", from, to).await.unwrap_err();
        assert_eq!(
            (err.status().map(|s| s.as_u16()), err.code()),
            (Some(500), Some("wal_corrupt")),
            "{err}"
        );
    }
    let text = scrape(&ws.url).await;
    for (series, value) in [
        ("walsync_corrupt_wal_bytes{timeline=\"tl\"}", 1000.0),
        ("walsync_corrupt_wal_found_total", 1.0),
        ("walsync_torn_tails_truncated_total", 0.0),
    ] {
        assert_eq!(metric(&text, series), value, "{series}");
    }
    // The timeline keeps taking appends.
    let end = fill(&c, "tl", term, 8, end, 500, 500).await;
    assert_eq!(c.read_wal("tl", 7000, end).await.unwrap(), chunk(8, 7000, 1500));
}

#[tokio::test]
async fn checkpoint_history_and_geometry_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut ws = Walsync::start(&dir.path().join("data"), &[]);
    let c = ws.client();
    let term = c.acquire_term("tl", None).await.unwrap().term;
    c.put_geometry("tl", term, &geometry(12288, 12288)).await.unwrap();
    let end = fill(&c, "tl", term, 2, 12288, 4000, 1000).await;
    let cp1 = c
        .add_checkpoint(
            "tl",
            term,
            &Checkpoint {
                checkpoint_lsn: 13000,
                end_lsn: 14000,
            },
        )
        .await
        .unwrap();
    assert_eq!(cp1.durable_lsn_at_arrival, Some(end));
    // Resent checkpoint blocks are recorded once; going backwards is refused.
    c.add_checkpoint(
        "tl",
        term,
        &Checkpoint {
            checkpoint_lsn: 13000,
            end_lsn: 14000,
        },
    )
    .await
    .unwrap();
    let back = c
        .add_checkpoint(
            "tl",
            term,
            &Checkpoint {
                checkpoint_lsn: 12999,
                end_lsn: 14000,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(back.code(), Some("bad_request"));
    let end = fill(&c, "tl", term, 2, end, 2000, 1000).await;
    c.put_geometry("tl", term, &geometry(17000, 17000)).await.unwrap();
    c.add_checkpoint(
        "tl",
        term,
        &Checkpoint {
            checkpoint_lsn: 16000,
            end_lsn: 17500,
        },
    )
    .await
    .unwrap();
    let checkpoints = c.checkpoints("tl").await.unwrap();
    let geometry_history = c.geometry_history("tl").await.unwrap();
    assert_eq!(
        (checkpoints.checkpoints.len(), geometry_history.geometry.len()),
        (2, 2)
    );

    assert!(ws.terminate().success(), "SIGTERM is a clean exit");
    ws.restart();
    let c = ws.client();
    assert_eq!(c.checkpoints("tl").await.unwrap(), checkpoints);
    assert_eq!(c.geometry_history("tl").await.unwrap(), geometry_history);
    let status = c.status("tl").await.unwrap();
    assert_eq!((status.term, status.durable_lsn), (term, Some(end)));
    assert_eq!(status.geometry.unwrap().geometry.first_lsn, 17000);
    assert_eq!(status.latest_checkpoint.unwrap().checkpoint.checkpoint_lsn, 16000);

    // Everything a fresh node needs: geometry in force, checkpoint to start from, WAL range.
    let plan = c.recovery_plan("tl", None).await.unwrap();
    assert_eq!(
        (plan.checkpoint.checkpoint_lsn, plan.wal_from, plan.wal_to),
        (16000, 16000, end)
    );
    assert_eq!(plan.geometry.first_lsn, 17000);
    let earlier = c.recovery_plan("tl", Some(16500)).await.unwrap();
    assert_eq!(
        (earlier.checkpoint.checkpoint_lsn, earlier.geometry.first_lsn),
        (13000, 12288)
    );
    let none = c.recovery_plan("tl", Some(13500)).await.unwrap_err();
    assert_eq!(none.code(), Some("no_recovery_point"));
}

#[tokio::test]
async fn branches_read_through_to_their_parent() {
    let dir = tempfile::tempdir().unwrap();
    let ws = Walsync::start(&dir.path().join("data"), &[]);
    let c = ws.client();
    let term = c.acquire_term("main", None).await.unwrap().term;
    c.put_geometry("main", term, &geometry(12288, 12288))
        .await
        .unwrap();
    let end = fill(&c, "main", term, 4, 12288, 1000, 500).await;
    c.add_checkpoint(
        "main",
        term,
        &Checkpoint {
            checkpoint_lsn: 12500,
            end_lsn: 12600,
        },
    )
    .await
    .unwrap();
    let end = fill(&c, "main", term, 4, end, 2000, 500).await;
    let branch = CreateTimelineRequest {
        parent: Some(BranchPoint {
            timeline_id: "main".into(),
            lsn: 14000,
        }),
    };
    let child = c.create_timeline("child", &branch).await.unwrap();
    assert_eq!(
        (child.durable_lsn, child.wal_start_lsn),
        (Some(14000), Some(14000))
    );
    assert_eq!(child.latest_checkpoint.unwrap().checkpoint.checkpoint_lsn, 12500);
    // Idempotent with the same parent, refused with another.
    c.create_timeline("child", &branch).await.unwrap();
    let other = c
        .create_timeline("child", &CreateTimelineRequest::default())
        .await
        .unwrap_err();
    assert_eq!(other.code(), Some("exists"));
    let beyond = CreateTimelineRequest {
        parent: Some(BranchPoint {
            timeline_id: "main".into(),
            lsn: end + 1,
        }),
    };
    assert_eq!(
        c.create_timeline("x", &beyond).await.unwrap_err().code(),
        Some("bad_request")
    );

    let child_term = c.acquire_term("child", None).await.unwrap();
    assert_eq!(child_term.durable_lsn, Some(14000));
    let gap = c
        .append("child", child_term.term, 14001, Bytes::from_static(b"x"))
        .await;
    assert_eq!(gap.unwrap_err().code(), Some("gap"));
    c.append("child", child_term.term, 14000, chunk(5, 14000, 100).into())
        .await
        .unwrap();
    let bytes = c.read_wal("child", 12500, 14100).await.unwrap();
    assert_eq!(&bytes[..1500], &chunk(4, 12500, 1500)[..]);
    assert_eq!(&bytes[1500..], &chunk(5, 14000, 100)[..]);
    let plan = c.recovery_plan("child", None).await.unwrap();
    assert_eq!((plan.wal_from, plan.wal_to), (12500, 14100));
}

#[tokio::test]
async fn retention_removes_old_wal_and_keeps_what_is_needed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ws = Walsync::start(
        &data,
        &[
            "--segment-size",
            "4096",
            "--retention-secs",
            "1",
            "--retention-interval-secs",
            "0.2",
        ],
    );
    let c = ws.client();
    for tl in ["solo", "parent"] {
        let term = c.acquire_term(tl, None).await.unwrap().term;
        let end = fill(&c, tl, term, 6, 100_000, 10_000, 1000).await;
        c.add_checkpoint(
            tl,
            term,
            &Checkpoint {
                checkpoint_lsn: 105_000,
                end_lsn: 105_100,
            },
        )
        .await
        .unwrap();
        let end = fill(&c, tl, term, 6, end, 50_000, 1000).await;
        c.add_checkpoint(
            tl,
            term,
            &Checkpoint {
                checkpoint_lsn: 150_000,
                end_lsn: 150_100,
            },
        )
        .await
        .unwrap();
        fill(&c, tl, term, 6, end, 10_000, 1000).await;
    }
    // The branch at 120000 needs the parent's WAL from the checkpoint before it (105000).
    let branch = CreateTimelineRequest {
        parent: Some(BranchPoint {
            timeline_id: "parent".into(),
            lsn: 120_000,
        }),
    };
    c.create_timeline("child", &branch).await.unwrap();
    let segments = |tl: &str| {
        std::fs::read_dir(data.join("timelines").join(tl).join("wal"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "seg"))
            .count()
    };
    let before = segments("solo");

    // Wait until both checkpoints are older than the 1 s window and retention has run.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let solo = loop {
        let s = c.status("solo").await.unwrap();
        if s.wal_start_lsn.unwrap() > 100_000 || std::time::Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // A pass may first keep from 105000 (once only that checkpoint is older than the window):
    // wait for the one keeping from 150000.
    let solo_start = loop {
        let start = c.status("solo").await.unwrap().wal_start_lsn.unwrap();
        if start >= 140_000 || std::time::Instant::now() > deadline {
            break start;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(solo.wal_start_lsn.unwrap() > 100_000, "retention removed nothing");
    assert!(
        (140_000..=150_000).contains(&solo_start),
        "solo keeps from 150000: {solo_start}"
    );
    assert!(segments("solo") < before / 2, "disk use did not shrink");
    c.read_wal("solo", 150_000, 170_000).await.unwrap();
    let removed = c.read_wal("solo", 100_000, 100_010).await.unwrap_err();
    assert_eq!(
        (removed.status().map(|s| s.as_u16()), removed.code()),
        (Some(410), Some("wal_removed"))
    );
    // Checkpoints whose WAL is gone are forgotten; the one in force stays. The pass forgets them
    // after removing the segments (status shows the new start first), so poll.
    let kept = loop {
        let kept = c.checkpoints("solo").await.unwrap().checkpoints;
        if kept.len() == 1 || std::time::Instant::now() > deadline {
            break kept;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].checkpoint.checkpoint_lsn, 150_000);

    // Retention visits timelines one after another: on a loaded machine the parent's turn may
    // come well after the solo one's.
    let parent_start = loop {
        let start = c.status("parent").await.unwrap().wal_start_lsn.unwrap();
        if start > 100_000 || std::time::Instant::now() > deadline {
            break start;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        (100_001..=105_000).contains(&parent_start),
        "parent keeps from 105000: {parent_start}"
    );
    let through_child = c.read_wal("child", 105_000, 120_000).await.unwrap();
    assert_eq!(through_child, chunk(6, 105_000, 15_000));
}

#[tokio::test]
async fn metrics_and_health_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let ws = Walsync::start(&dir.path().join("data"), &[]);
    let c = ws.client();
    let term = c.acquire_term("tl", None).await.unwrap().term;
    fill(&c, "tl", term, 0, 1000, 1000, 100).await;
    let text = scrape(&ws.url).await;
    for name in [
        "walsync_append_latency_seconds_bucket",
        // Ten appends, each waited for: one fdatasync each. Fewer would mean an append was
        // acknowledged without one.
        "walsync_fsync_latency_seconds_count 10\n",
        "walsync_fsync_batch_appends_sum 10.0\n",
        "walsync_appended_bytes_total 1000",
        "walsync_durable_lsn{timeline=\"tl\"} 2000",
        "walsync_checkpoint_lag_bytes",
        "walsync_http_requests_total{endpoint=\"append\",status=\"200\"} 10",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    let http = ibd_api::HttpClient::new(&ws.url, ibd_api::RetryPolicy::none()).unwrap();
    let unknown = http.get_bytes("/nope").await.unwrap_err();
    assert_eq!(unknown.code(), Some("not_found"));
}

#[test]
fn refuses_an_unusable_data_dir_a_locked_one_and_a_taken_port() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let out = common::command(&file, &[])
        .arg("--listen")
        .arg("127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot create data directory"));

    let data = dir.path().join("data");
    let _running = Walsync::start(&data, &[]);
    let out = common::command(&data, &[])
        .arg("--listen")
        .arg("127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another walsync"));

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = common::command(&dir.path().join("other"), &[])
        .arg("--listen")
        .arg(&addr)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen on"));
}

#[tokio::test]
async fn segments_start_as_zeroed_files_once_a_writer_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut ws = Walsync::start(&data, &["--segment-size", "65536"]);
    let c = ws.client();
    let term = c.acquire_term("tl", None).await.unwrap().term;
    let wal = data.join("timelines/tl/wal");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !wal.join("spare").exists() {
        assert!(std::time::Instant::now() < deadline, "no spare segment was made");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The first segment is the spare: 64 KiB of zeros, ten records written over its start.
    let end = fill(&c, "tl", term, 3, 5000, 10_000, 1000).await;
    let first = wal.join(format!("{:016x}.seg", 5000));
    assert_eq!(std::fs::metadata(&first).unwrap().len(), 65536);
    let text = scrape(&ws.url).await;
    assert_eq!(
        metric(&text, "walsync_segments_started_total{start=\"zeroed\"}"),
        1.0
    );
    // Two more segments' worth: each roll takes the next spare (or starts empty if it is not
    // ready yet: slower, same WAL). The 65th record runs past the zeros and extends the file.
    let end = fill(&c, "tl", term, 3, end, 140_000, 1000).await;
    assert_eq!(std::fs::metadata(&first).unwrap().len(), 65 * 1016);
    ws.kill_and_restart();
    let c = ws.client();
    assert_eq!(c.status("tl").await.unwrap().durable_lsn, Some(end));
    assert_eq!(
        c.read_wal("tl", 5000, end).await.unwrap(),
        chunk(3, 5000, 150_000)
    );
    let text = scrape(&ws.url).await;
    assert_eq!(metric(&text, "walsync_torn_tails_truncated_total"), 0.0);
    assert_eq!(metric(&text, "walsync_corrupt_wal_found_total"), 0.0);
}
