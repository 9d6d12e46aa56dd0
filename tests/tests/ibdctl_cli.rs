//! `ibdctl` from the operator's side: `up` brings up the whole stack and prints a connection line
//! that works; a second `up` only reports; committed rows survive `compute stop --kill` (a crash)
//! and `compute start --fresh` (the compute's whole local disk deleted: the stateless restart);
//! `down` leaves no mount and no process behind.

use std::process::Command;
use std::time::Instant;

use ibd_e2e::{free_ports, mounts_under, prereq, processes_mentioning, sql_on_socket, Ibdctl};
use serde_json::Value;

const TEST: &str = "ibdctl_up_crash_fresh_start_down";

fn compute(status: &str) -> Value {
    let status: Value = serde_json::from_str(status).unwrap();
    status["computes"][0].clone()
}

/// Rows and checksums of what the test committed.
fn fingerprint(socket: &std::path::Path) -> Vec<String> {
    [
        "SELECT COUNT(*), SUM(qty) FROM shop.orders",
        "CHECKSUM TABLE shop.orders",
        "SELECT COUNT(*) FROM shop.journal",
    ]
    .iter()
    .map(|q| sql_on_socket(socket, q).unwrap())
    .collect()
}

#[test]
fn ibdctl_up_crash_fresh_start_down() {
    if !prereq::require_mariadb_on_fuse(TEST) {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home");
    let ctl = Ibdctl::new(&home);
    let ports: Vec<String> = free_ports(5).iter().map(u16::to_string).collect();
    let up = [
        "up",
        "--no-install",
        "--api-port",
        &ports[0],
        "--pageserver-port",
        &ports[1],
        "--walsync-port",
        &ports[2],
        "--mariadb-port",
        &ports[3],
        "--metrics-port",
        &ports[4],
        "--config",
        "innodb_buffer_pool_size=64M",
    ];
    let started = Instant::now();
    let first = ctl.run(&up).unwrap();
    eprintln!("up took {:?}", started.elapsed());
    for step in [
        "starting pageserver-lite",
        "starting walsync",
        "mariadb-install-db",
        "MariaDB answers",
    ] {
        assert!(first.stderr.contains(step), "no {step:?} in\n{}", first.stderr);
    }

    // The printed TCP connection line answers SELECT 1, as printed.
    let line = first
        .stdout
        .lines()
        .find_map(|l| l.find("mariadb -h127.0.0.1").map(|at| l[at..].trim().to_string()))
        .unwrap_or_else(|| panic!("no TCP connection line in\n{}", first.stdout));
    assert!(line.contains(&format!("-P{}", ports[3])), "{line}");
    let words: Vec<&str> = line.split_whitespace().collect();
    let out = Command::new(words[0])
        .args(&words[1..])
        .args(["-N", "-B", "-e", "SELECT 1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{line}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");

    // A second up only reports what runs.
    let second = ctl.run(&up).unwrap();
    for what in [
        "pageserver-lite already runs",
        "walsync already runs",
        "compute main already runs",
        "control plane already runs",
    ] {
        assert!(second.stderr.contains(what), "no {what:?} in\n{}", second.stderr);
    }
    assert!(!second.stderr.contains("starting"), "{}", second.stderr);

    let status: Value = serde_json::from_str(&ctl.status().unwrap()).unwrap();
    assert_eq!(status["control_plane"]["state"], "running");
    for service in status["services"].as_array().unwrap() {
        assert_eq!(service["state"], "running", "{service}");
    }
    let main = &status["computes"][0];
    assert_eq!(
        (main["state"].as_str(), main["answering"].as_bool()),
        (Some("running"), Some(true))
    );
    let socket = std::path::PathBuf::from(main["socket"].as_str().unwrap());
    let mycnf = std::fs::read_to_string(home.join("computes/main/run/my.cnf")).unwrap();
    for want in [
        "innodb_doublewrite=0",
        "innodb_flush_neighbors=0",
        "innodb_buffer_pool_size=64M",
    ] {
        assert!(mycnf.lines().any(|l| l == want), "{want} not in\n{mycnf}");
    }

    // The innodb_page_server plugin is loaded and describes the mount.
    let vars = sql_on_socket(&socket, "SHOW VARIABLES LIKE 'innodb_page_server_enabled'").unwrap();
    assert_eq!(vars.trim(), "innodb_page_server_enabled\tON", "{mycnf}");

    // Committed rows: a bulk load and a stream of small transactions.
    sql_on_socket(
        &socket,
        "CREATE DATABASE shop;
         CREATE TABLE shop.orders (id INT PRIMARY KEY, qty INT NOT NULL, note VARCHAR(200)) ENGINE=InnoDB;
         INSERT INTO shop.orders SELECT seq, seq % 17, REPEAT('x', seq % 200) FROM seq_1_to_20000;
         CREATE TABLE shop.journal (id INT PRIMARY KEY) ENGINE=InnoDB;",
    )
    .unwrap();
    for i in 1..=30 {
        sql_on_socket(
            &socket,
            &format!(
                "START TRANSACTION; UPDATE shop.orders SET qty = qty + 1 WHERE id = {i};
                 INSERT INTO shop.journal VALUES ({i}); COMMIT;"
            ),
        )
        .unwrap();
    }
    let before = fingerprint(&socket);
    assert_eq!(before[2], "30");

    // A crash: SIGKILL of mariadbd and fuse-ibd.
    let killed = ctl.run(&["compute", "stop", "--kill"]).unwrap();
    assert!(killed.stderr.contains("SIGKILL"), "{}", killed.stderr);
    let datadir = home.join("computes/main/datadir");
    assert!(
        mounts_under(&datadir).is_empty(),
        "the dead mount was not detached"
    );
    let computes_dir = home.join("computes");
    assert!(
        processes_mentioning(&computes_dir).is_empty(),
        "{:?}",
        processes_mentioning(&computes_dir)
    );
    assert_eq!(compute(&ctl.status().unwrap())["state"], "stopped");

    // The stateless restart: the local disk is deleted and the node comes back from the services
    // through MariaDB's own crash recovery, without mariadb-install-db.
    let error_log = home.join("computes/main/logs/mariadbd.err");
    let recoveries = || {
        std::fs::read_to_string(&error_log)
            .unwrap()
            .matches("Starting crash recovery")
            .count()
    };
    let recoveries_before = recoveries();
    let started = Instant::now();
    let fresh = ctl.run(&["compute", "start", "--fresh"]).unwrap();
    eprintln!("start --fresh took {:?}", started.elapsed());
    assert!(
        fresh.stderr.contains("deleted the local disk"),
        "{}",
        fresh.stderr
    );
    assert!(fresh.stderr.contains("a fresh node"), "{}", fresh.stderr);
    assert!(!fresh.stderr.contains("mariadb-install-db"), "{}", fresh.stderr);
    assert_eq!(
        recoveries(),
        recoveries_before + 1,
        "mariadbd did not run crash recovery"
    );
    let fuse_log = std::fs::read_to_string(home.join("computes/main/logs/fuse-ibd.log")).unwrap();
    assert!(fuse_log.contains("fresh node"), "{fuse_log}");
    assert_eq!(fingerprint(&socket), before, "committed rows changed");
    let check = sql_on_socket(&socket, "CHECK TABLE shop.orders, shop.journal").unwrap();
    assert!(check.lines().all(|l| l.ends_with("OK")), "{check}");

    ctl.run(&["down"]).unwrap();
    assert!(mounts_under(&home).is_empty(), "{:?}", mounts_under(&home));
    assert!(
        processes_mentioning(&home).is_empty(),
        "{:?}",
        processes_mentioning(&home)
    );
    let status: Value = serde_json::from_str(&ctl.status().unwrap()).unwrap();
    assert_eq!(status["control_plane"]["state"], "stopped");
    assert_eq!(status["computes"][0]["state"], "stopped");
}
