//! Tests against pages and logs the installed MariaDB produced (`scripts/make-testdata.sh`).

use std::io::Read;
use std::path::{Path, PathBuf};

use ibd_format::page::{self, ChecksumAlgorithm, Page, PageType, SpaceFlags};
use ibd_format::redo::{Checkpoint, LogFile, LogGeometry, SyntheticLog, START_OFFSET};

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

fn pages() -> Vec<(String, Vec<u8>)> {
    let mut pages: Vec<_> = std::fs::read_dir(testdata().join("pages"))
        .expect("testdata/pages exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "page"))
        .map(|p| {
            (
                p.file_stem().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    pages.sort();
    assert!(
        pages.len() >= 10,
        "expected the page samples, found {}",
        pages.len()
    );
    pages
}

fn log_sample(name: &str) -> (Vec<u8>, u64) {
    let gz = std::fs::File::open(testdata().join(format!("redo/{name}.ib_logfile0.gz"))).unwrap();
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(gz).read_to_end(&mut bytes).unwrap();
    let env = std::fs::read_to_string(testdata().join(format!("redo/{name}.env"))).unwrap();
    let end = env
        .lines()
        .find_map(|l| l.strip_prefix("SERVER_END_OF_LOG_LSN="))
        .expect("SERVER_END_OF_LOG_LSN recorded")
        .parse()
        .unwrap();
    (bytes, end)
}

#[test]
fn every_sample_page_validates_with_the_expected_algorithm() {
    for (name, bytes) in pages() {
        let algo = page::verify_checksum(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        let expected = if name == "zero" {
            ChecksumAlgorithm::AllZero
        } else if name.starts_with("crc32-") {
            ChecksumAlgorithm::Crc32
        } else {
            ChecksumAlgorithm::FullCrc32
        };
        assert_eq!(algo, expected, "{name}");
    }
}

#[test]
fn page_types_and_headers_match_what_was_sampled() {
    for (name, bytes) in pages() {
        let p = Page::new(&bytes).unwrap();
        let kind = name.rsplit('-').next().unwrap();
        let expected = match kind {
            "fsp_hdr" => PageType::FspHdr,
            "ibuf_bitmap" => PageType::IbufBitmap,
            "inode" => PageType::Inode,
            "trx_sys" => PageType::TrxSys,
            "sys" => PageType::Sys,
            "undo_log" => PageType::UndoLog,
            "index" => PageType::Index,
            "blob" => PageType::Blob,
            "zero" => PageType::Allocated,
            other => panic!("unknown sample kind {other}"),
        };
        assert_eq!(p.page_type(), expected, "{name}");
        if kind != "zero" {
            assert_eq!(page::page_no(&bytes), p.page_no());
            assert_eq!(page::space_id(&bytes), p.space_id());
            assert!(p.lsn() > 0, "{name}: written pages carry an LSN");
        }
    }
}

#[test]
fn fsp_headers_give_space_id_size_and_page_size() {
    for (name, bytes) in pages().into_iter().filter(|(n, _)| n.ends_with("fsp_hdr")) {
        let p = Page::new(&bytes).unwrap();
        let fsp = p.fsp_header();
        assert_eq!(fsp.space_id.get(), p.space_id(), "{name}");
        assert!(fsp.size.get() >= 4, "{name}: size {}", fsp.size.get());
        assert!(fsp.free_limit.get() <= fsp.size.get().max(64), "{name}");
        let flags = SpaceFlags(fsp.flags.get());
        assert_eq!(
            flags.page_size(),
            Some(page::PAGE_SIZE),
            "{name}: flags {:#x}",
            flags.0
        );
        assert_eq!(flags.is_full_crc32(), !name.starts_with("crc32-"), "{name}");
        assert!(!flags.is_page_compressed());
        if name.starts_with("ibdata1") {
            assert_eq!(p.space_id(), 0);
            assert_eq!(flags.0, 0x15, "the default full_crc32 flags");
        }
    }
}

/// Bytes the legacy (non-full_crc32) checksums do not cover, exactly as in the server:
/// `FIL_PAGE_FILE_FLUSH_LSN` [26, 34) and `FIL_PAGE_SPACE_ID` [34, 38).
const LEGACY_UNCOVERED: std::ops::Range<usize> = 26..38;

#[test]
fn flipping_any_single_byte_of_a_written_page_fails_validation() {
    for (name, bytes) in pages().into_iter().filter(|(n, _)| n != "zero") {
        let legacy = name.starts_with("crc32-");
        let mut page = bytes.clone();
        for i in 0..page.len() {
            page[i] ^= 0x01;
            let verdict = page::verify_checksum(&page);
            if legacy && LEGACY_UNCOVERED.contains(&i) {
                assert!(
                    verdict.is_ok(),
                    "{name} byte {i}: the server ignores this byte, so must we"
                );
            } else {
                assert!(
                    verdict.is_err(),
                    "{name}: flipping byte {i} was not detected ({verdict:?})"
                );
            }
            page[i] ^= 0x01;
        }
    }
}

#[test]
fn legacy_innodb_checksums_are_accepted() {
    // 10.11 can no longer write innodb_checksum_algorithm=innodb pages; rewrite a real legacy page's
    // two fields with the innodb fold checksums and check the server's rule accepts it.
    let (_, mut bytes) = pages().into_iter().find(|(n, _)| n == "crc32-index").unwrap();
    let size = bytes.len();
    let new = page::innodb_new_checksum(&bytes);
    bytes[0..4].copy_from_slice(&new.to_be_bytes());
    let old = page::innodb_old_checksum(&bytes);
    bytes[size - 8..size - 4].copy_from_slice(&old.to_be_bytes());
    assert_eq!(page::verify_checksum(&bytes), Ok(ChecksumAlgorithm::Innodb));
    bytes[100] ^= 1;
    assert!(page::verify_checksum(&bytes).is_err());
}

#[test]
fn wrapped_log_scans_to_the_lsn_the_server_reported() {
    let (bytes, server_end) = log_sample("wrapped");
    let log = LogFile::parse(&bytes).unwrap();
    let g = log.geometry();
    assert_eq!(
        g.first_lsn, START_OFFSET,
        "a log that was never resized starts at 0x3000"
    );
    assert!(
        server_end - g.first_lsn > g.capacity(),
        "the sample must have wrapped"
    );
    let scan = log.recovery_scan().unwrap();
    assert_eq!(scan.end_lsn, server_end);
    assert!(!scan.mtrs.is_empty(), "the crash left mtrs after the checkpoint");
    assert_eq!(scan.mtrs.last().unwrap().end, server_end);
}

#[test]
fn resized_log_scans_to_the_lsn_the_server_reported() {
    let (bytes, server_end) = log_sample("resized");
    let log = LogFile::parse(&bytes).unwrap();
    assert_ne!(
        log.geometry().first_lsn,
        START_OFFSET,
        "a resized log starts at the resize LSN"
    );
    assert_eq!(log.geometry().file_size, 5 << 20);
    assert!(
        log.header().creator.starts_with("MariaDB 10.11"),
        "{}",
        log.header().creator
    );
    assert_eq!(log.recovery_scan().unwrap().end_lsn, server_end);
}

/// A copy of `bytes` truncated at `target` as PITR does it: every byte of the circular area
/// outside `[checkpoint_lsn, target)` zeroed.
fn zero_tail(bytes: &[u8], g: LogGeometry, checkpoint_lsn: u64, target: u64) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for (offset, len) in g.file_ranges(target, g.capacity() - (target - checkpoint_lsn)) {
        out[offset as usize..(offset + len) as usize].fill(0);
    }
    out
}

#[test]
fn log_truncated_at_an_mtr_boundary_scans_to_exactly_that_boundary() {
    for name in ["wrapped", "resized"] {
        let (bytes, _) = log_sample(name);
        let log = LogFile::parse(&bytes).unwrap();
        let scan = log.recovery_scan().unwrap();
        let checkpoint_mtr_end = scan
            .mtrs
            .iter()
            .find(|m| {
                m.start >= scan.checkpoint.end_lsn
                    && m.file_checkpoint == Some(scan.checkpoint.checkpoint_lsn)
            })
            .unwrap()
            .end;
        let boundaries: Vec<u64> = scan
            .mtrs
            .iter()
            .map(|m| m.end)
            .filter(|&e| e >= checkpoint_mtr_end)
            .collect();
        let step = (boundaries.len() / 25).max(1);
        for &target in boundaries.iter().step_by(step) {
            let truncated = zero_tail(&bytes, log.geometry(), scan.checkpoint.checkpoint_lsn, target);
            let end = LogFile::parse(&truncated)
                .unwrap()
                .recovery_scan()
                .unwrap()
                .end_lsn;
            assert_eq!(end, target, "{name}");
        }
    }
}

#[test]
fn synthetic_log_from_checkpoint_wal_recovers_to_the_same_end() {
    for name in ["wrapped", "resized"] {
        let (bytes, server_end) = log_sample(name);
        let log = LogFile::parse(&bytes).unwrap();
        let scan = log.recovery_scan().unwrap();
        let cp = scan.checkpoint;
        let wal = log.logical(cp.checkpoint_lsn, server_end - cp.checkpoint_lsn);
        let synth = SyntheticLog {
            geometry: log.geometry(),
            creator: "fuse-ibd",
            checkpoint: cp,
            wal: wal.into(),
        };
        let built = synth.build().unwrap();
        assert_eq!(built.len(), bytes.len());
        let rebuilt = LogFile::parse(&built).unwrap();
        let rescan = rebuilt.recovery_scan().unwrap();
        assert_eq!(rescan.end_lsn, server_end, "{name}");
        assert_eq!(rescan.mtrs, scan.mtrs, "{name}");
        assert_eq!(rebuilt.header().creator, "fuse-ibd");
    }
}

#[test]
fn synthetic_log_refuses_wal_that_recovery_would_refuse() {
    let (bytes, server_end) = log_sample("wrapped");
    let log = LogFile::parse(&bytes).unwrap();
    let cp = log.recovery_scan().unwrap().checkpoint;
    let wal = log.logical(cp.checkpoint_lsn, server_end - cp.checkpoint_lsn);
    let synth = |checkpoint: Checkpoint, wal: &[u8]| SyntheticLog {
        geometry: log.geometry(),
        creator: "x",
        checkpoint,
        wal: wal.to_vec().into(),
    };
    // Cut inside the last mtr: not at a boundary.
    assert!(synth(cp, &wal[..wal.len() - 3]).build().is_err());
    // A checkpoint block pointing past every FILE_CHECKPOINT mtr of the WAL.
    let wrong = Checkpoint {
        end_lsn: server_end,
        ..cp
    };
    assert!(synth(wrong, &wal).build().is_err());
}

#[test]
fn empty_synthetic_log_ends_right_after_its_checkpoint_mtr() {
    let lsn = 8_888_466;
    let synth = SyntheticLog::empty_at(lsn, 96 << 20, "fuse-ibd").unwrap();
    let bytes = synth.build().unwrap();
    let scan = LogFile::parse(&bytes).unwrap().recovery_scan().unwrap();
    assert_eq!(
        scan.checkpoint,
        Checkpoint {
            checkpoint_lsn: lsn,
            end_lsn: lsn
        }
    );
    assert_eq!(scan.end_lsn, lsn + 16);
}
