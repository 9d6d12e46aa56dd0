//! `fuse-ibd --ebpf` loads the kernel probes on its own mount and exports
//! `fuse_ibd_kernel_latency_seconds{source,op}` on `/metrics` (issue: ebpf-probes, item 5).

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use ibd_api::{HttpClient, RetryPolicy};
use ibd_e2e::{prereq, FuseIbd};

/// The address `fuse-ibd` logged for its metrics endpoint (`--metrics 127.0.0.1:0`).
fn metrics_url(fuse: &FuseIbd) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = fuse.log_text();
        if let Some(line) = log.lines().find(|l| l.contains("serving /metrics")) {
            let addr = line
                .split("addr=")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap();
            return format!("http://{addr}");
        }
        assert!(Instant::now() < deadline, "no metrics address in the log:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `<name>{<labels>} <value>` of a Prometheus text exposition.
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
}

#[test]
fn kernel_fuse_latency_of_the_mount_is_exported_on_metrics() {
    let test = "kernel_fuse_latency_of_the_mount_is_exported_on_metrics";
    if !(prereq::require_fuse(test) && prereq::require_tools(test, &["clang"])) {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let (mnt, cache) = (root.path().join("datadir"), root.path().join("cache"));
    let fuse = FuseIbd::mount_with(&mnt, &cache, &["--metrics", "127.0.0.1:0", "--ebpf"]).unwrap();
    // The probes filter on the mount's device, so the daemon loads them right after mounting.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fuse.log_text().contains("eBPF probe") {
        assert!(
            Instant::now() < deadline,
            "probes not loaded:\n{}",
            fuse.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let file = std::fs::File::create_new(mnt.join("t.ibd")).unwrap();
    for i in 0..200u64 {
        file.write_all_at(&[i as u8; 16384], i * 16384).unwrap();
    }
    file.sync_data().unwrap();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = HttpClient::new(&metrics_url(&fuse), RetryPolicy::default()).unwrap();
    let text = rt.block_on(client.get_bytes("/metrics")).unwrap().body;
    let text = String::from_utf8_lossy(&text);
    let writes = sample(
        &text,
        r#"fuse_ibd_kernel_latency_seconds_count{source="fuse",op="write"}"#,
    );
    assert!(
        writes.is_some_and(|n| n >= 200.0),
        "kernel-side FUSE writes: {writes:?}\n{text}"
    );
    let fsyncs = sample(
        &text,
        r#"fuse_ibd_kernel_latency_seconds_count{source="fuse",op="fsync"}"#,
    );
    assert!(
        fsyncs.is_some_and(|n| n >= 1.0),
        "kernel-side FUSE fsyncs: {fsyncs:?}"
    );
    // The daemon's own view of the same writes sits next to it: kernel time includes queueing.
    assert!(text.contains(r#"fuse_ibd_op_duration_seconds_count{op="write"}"#));
    // The daemon removes its pins when it exits, even with the mount still busy (`file` is open).
    let pins = std::path::Path::new("/sys/fs/bpf")
        .join(ebpf_probes::PIN_LAYOUT_DIR)
        .join(format!("fuse-ibd-{}", fuse.pid().unwrap()));
    assert!(pins.exists(), "pins live at {}", pins.display());
    fuse.unmount().unwrap();
    assert!(!pins.exists(), "{} outlived the daemon", pins.display());
    drop(file);
}
