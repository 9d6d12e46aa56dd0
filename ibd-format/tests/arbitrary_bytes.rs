//! Property tests: the parsers take whatever bytes a file or a peer hands them and never panic.

use ibd_format::page::{self, Page};
use ibd_format::redo::{
    file_checkpoint_mtr, Checkpoint, LogFile, LogGeometry, LogHeader, MtrScanner, SyntheticLog, START_OFFSET,
};
use proptest::prelude::*;

fn page_len() -> impl Strategy<Value = usize> {
    prop_oneof![Just(4096usize), Just(16384), Just(100), Just(0), Just(4097)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn page_parsing_never_panics(len in page_len(), seed in any::<u64>(), fill in any::<u8>()) {
        let mut bytes = vec![fill; len];
        let mut x = seed;
        for b in bytes.iter_mut().step_by(7) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            *b = (x >> 56) as u8;
        }
        let _ = page::verify_checksum(&bytes);
        let _ = (page::page_lsn(&bytes), page::space_id(&bytes), page::page_no(&bytes));
        if let Ok(p) = Page::new(&bytes) {
            let _ = (p.page_type(), p.fsp_header().size.get(), p.is_all_zero());
        }
    }

    #[test]
    fn page_with_arbitrary_header_and_trailer_never_panics(
        head in proptest::collection::vec(any::<u8>(), 64),
        tail in proptest::collection::vec(any::<u8>(), 16),
    ) {
        let mut bytes = vec![0u8; 16384];
        bytes[..64].copy_from_slice(&head);
        bytes[16384 - 16..].copy_from_slice(&tail);
        let _ = page::verify_checksum(&bytes);
    }

    #[test]
    fn header_and_checkpoint_parsing_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = LogHeader::parse(&bytes);
        let _ = Checkpoint::parse(&bytes, START_OFFSET);
    }

    #[test]
    fn mtr_scanning_of_arbitrary_bytes_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        base in START_OFFSET..u64::MAX / 4,
        capacity in 16u64..1 << 24,
        encrypted in any::<bool>(),
    ) {
        let g = LogGeometry::new(START_OFFSET, START_OFFSET + capacity).unwrap();
        let base = base.max(g.first_lsn);
        let scanner = MtrScanner::new(&bytes, base, g).encrypted(encrypted);
        let (end, _) = scanner.scan_to_end();
        prop_assert!(end >= base && end <= base + bytes.len() as u64);
    }

    #[test]
    fn mutated_valid_log_never_panics_and_never_scans_past_its_bytes(
        flips in proptest::collection::vec((0usize..40_000, any::<u8>()), 1..20),
    ) {
        let lsn = 100_000;
        let mut wal = file_checkpoint_mtr(lsn, 1).to_vec();
        wal.extend_from_slice(&file_checkpoint_mtr(lsn, 1));
        let geometry = LogGeometry::new(lsn, 40_000).unwrap();
        let cp = Checkpoint { checkpoint_lsn: lsn, end_lsn: lsn };
        let synth = SyntheticLog { geometry, creator: "p", checkpoint: cp, wal: wal.into() };
        let mut bytes = synth.build().unwrap();
        for (at, v) in flips {
            bytes[at] ^= v;
        }
        if let Ok(log) = LogFile::parse(&bytes) {
            if let Ok(scan) = log.recovery_scan() {
                prop_assert!(scan.end_lsn >= scan.checkpoint.checkpoint_lsn);
            }
        }
    }
}
