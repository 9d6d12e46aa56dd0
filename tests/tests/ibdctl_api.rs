//! The control plane's HTTP API (`ibdctl serve`) drives a compute the seeds' way
//! (`POST /api/v1/projects/<id>/compute` with `page_server_url` and `safekeeper_url`) through
//! committed rows, a crash, a restart of the control plane itself, a fresh start, and a crash the
//! restarted control plane finds and repairs on its own; then everything is deleted and nothing
//! is left behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use ibd_api::{ClientError, HttpClient, RetryPolicy};
use ibd_e2e::{free_ports, mounts_under, prereq, processes_mentioning, sql_on_socket, Ibdctl, Service};
use serde_json::{json, Value};

const TEST: &str = "ibdctl_api_crash_control_plane_restart_fresh_start";

/// `ibdctl serve` as a child of the test; SIGKILLed on drop if still running.
struct ControlPlane {
    child: Option<Child>,
    url: String,
}

impl ControlPlane {
    fn start(ctl: &Ibdctl, port: u16) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(ctl.home.with_extension("serve.log"))
            .unwrap();
        let child = ctl
            .command(&["serve", "--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        let client = HttpClient::new(&url, RetryPolicy::none()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        while rt.block_on(client.get_bytes("/healthz")).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the control plane did not answer"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child: Some(child),
            url,
        }
    }

    /// SIGTERM: the control plane stops; the computes it started keep running.
    fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().unwrap();
        assert!(status.success(), "ibdctl serve exited with {status}");
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

struct Api {
    client: HttpClient,
    rt: tokio::runtime::Runtime,
}

impl Api {
    fn new(url: &str) -> Self {
        Self {
            client: HttpClient::new(url, RetryPolicy::none()).unwrap(),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        }
    }

    /// Any answer as (status, JSON body).
    fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let (ct, bytes) = match body {
            Some(body) => (
                Some("application/json"),
                serde_json::to_vec(&body).unwrap().into(),
            ),
            None => (None, bytes::Bytes::new()),
        };
        match self.rt.block_on(self.client.send(method, path, ct, bytes)) {
            Ok(resp) => (resp.status, serde_json::from_slice(&resp.body).unwrap()),
            Err(ClientError::Status { status, body, .. }) => {
                (status, json!({"error": body.error, "message": body.message}))
            }
            Err(e) => panic!("{path}: {e}"),
        }
    }

    fn ok(&self, method: Method, path: &str, body: Option<Value>, want: StatusCode) -> Value {
        let (status, value) = self.call(method.clone(), path, body);
        assert_eq!(status, want, "{method} {path}: {value}");
        value
    }
}

fn rows(socket: &Path) -> (String, String) {
    (
        sql_on_socket(socket, "SELECT COUNT(*), SUM(v) FROM app.kv").unwrap(),
        sql_on_socket(socket, "CHECKSUM TABLE app.kv").unwrap(),
    )
}

#[test]
fn ibdctl_api_crash_control_plane_restart_fresh_start() {
    if !prereq::require_mariadb_on_fuse(TEST) {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let pageserver = Service::start("pageserver-lite", &root.path().join("pageserver")).unwrap();
    let walsync = Service::start("walsync", &root.path().join("walsync")).unwrap();
    let ctl = Ibdctl::new(&root.path().join("home"));
    let ports = free_ports(2);
    let (api_port, db_port) = (ports[0], ports[1]);
    let cp = ControlPlane::start(&ctl, api_port);
    let api = Api::new(&cp.url);

    api.ok(
        Method::POST,
        "/api/v1/projects",
        Some(json!({"id": "shop"})),
        StatusCode::CREATED,
    );
    let (status, err) = api.call(Method::POST, "/api/v1/projects", Some(json!({"id": "shop"})));
    assert_eq!(
        (status, err["error"].as_str()),
        (StatusCode::CONFLICT, Some("conflict"))
    );
    let (status, err) = api.call(Method::POST, "/api/v1/projects", Some(json!({"id": "no/slash"})));
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");

    // Refused configs change nothing.
    let (status, err) = api.call(
        Method::POST,
        "/api/v1/projects/shop/compute",
        Some(json!({"config": {"image": "mariadb-pageserver:latest"}})),
    );
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("no container engine"),
        "{err}"
    );
    let (status, err) = api.call(
        Method::POST,
        "/api/v1/projects/shop/compute",
        Some(json!({"config": {"extra_config": ["[client]"]}})),
    );
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    let listed = api.ok(Method::GET, "/api/v1/projects/shop/compute", None, StatusCode::OK);
    assert_eq!(listed.as_array().unwrap().len(), 0);

    let started = Instant::now();
    let created = api.ok(
        Method::POST,
        "/api/v1/projects/shop/compute",
        Some(json!({
            "name": "c1",
            "config": {
                "page_server_url": pageserver.url,
                "safekeeper_url": walsync.url,
                "port": db_port,
                "extra_config": ["innodb_buffer_pool_size=64M"],
            }
        })),
        StatusCode::CREATED,
    );
    eprintln!("create + start took {:?}", started.elapsed());
    assert_eq!(
        (created["state"].as_str(), created["answering"].as_bool()),
        (Some("running"), Some(true))
    );
    assert_eq!(created["port"], db_port);
    assert_eq!(created["page_server_url"], pageserver.url.as_str());
    let socket = PathBuf::from(created["socket"].as_str().unwrap());

    // One writer per timeline: a second running compute of the project is refused up front.
    let (status, err) = api.call(
        Method::POST,
        "/api/v1/projects/shop/compute",
        Some(json!({"name": "c2"})),
    );
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert_eq!(
        api.ok(Method::GET, "/api/v1/projects/shop/compute", None, StatusCode::OK)
            .as_array()
            .unwrap()
            .len(),
        1
    );

    sql_on_socket(
        &socket,
        "CREATE DATABASE app;
         CREATE TABLE app.kv (k INT PRIMARY KEY, v BIGINT NOT NULL, pad CHAR(100)) ENGINE=InnoDB;
         INSERT INTO app.kv SELECT seq, seq * 3, 'p' FROM seq_1_to_10000;",
    )
    .unwrap();
    for i in 1..=20 {
        sql_on_socket(&socket, &format!("UPDATE app.kv SET v = v + {i} WHERE k = {i}")).unwrap();
    }
    let committed = rows(&socket);

    // A crash through the API.
    let stopped = api.ok(
        Method::POST,
        "/api/v1/projects/shop/compute/c1/stop",
        Some(json!({"kill": true})),
        StatusCode::OK,
    );
    assert_eq!(stopped["state"], "stopped");
    assert_eq!(stopped["mounted"], false);

    // The control plane restarts; its state survives.
    cp.stop();
    let cp = ControlPlane::start(&ctl, api_port);
    let api = Api::new(&cp.url); // the old connections went with the old process
    let c1 = api.ok(
        Method::GET,
        "/api/v1/projects/shop/compute/c1",
        None,
        StatusCode::OK,
    );
    assert_eq!(
        (c1["state"].as_str(), c1["desired"].as_str()),
        (Some("stopped"), Some("stopped"))
    );
    assert_eq!(
        api.ok(Method::GET, "/api/v1/projects/shop", None, StatusCode::OK)["initialized"],
        true
    );

    // The stateless restart through the API.
    let started = Instant::now();
    let fresh = api.ok(
        Method::POST,
        "/api/v1/projects/shop/compute/c1/start",
        Some(json!({"fresh": true})),
        StatusCode::OK,
    );
    eprintln!("fresh start took {:?}", started.elapsed());
    assert_eq!(
        (fresh["state"].as_str(), fresh["answering"].as_bool()),
        (Some("running"), Some(true))
    );
    assert_eq!(rows(&socket), committed, "committed rows changed");
    let fuse_log = std::fs::read_to_string(ctl.home.join("computes/c1/logs/fuse-ibd.log")).unwrap();
    assert!(fuse_log.contains("fresh node"), "{fuse_log}");
    let install_runs = std::fs::read_to_string(ctl.home.join("computes/c1/logs/install.log")).unwrap();
    assert!(!install_runs.is_empty(), "the first start installed the database");

    // A crash the restarted control plane finds on its own: mariadbd killed behind its back.
    let pid = fresh["mariadbd_pid"].as_u64().unwrap();
    // SAFETY: SIGKILL of the mariadbd this test's control plane started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let started = Instant::now();
    let repaired = loop {
        let c1 = api.ok(
            Method::GET,
            "/api/v1/projects/shop/compute/c1",
            None,
            StatusCode::OK,
        );
        if c1["restarts"] == 1 && c1["answering"] == true {
            break c1;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "not restarted: {c1}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("supervisor restart took {:?}", started.elapsed());
    assert_ne!(repaired["mariadbd_pid"].as_u64(), Some(pid));
    assert!(
        repaired["last_crash"]
            .as_str()
            .unwrap()
            .contains(&format!("mariadbd (pid {pid}) is not running")),
        "{repaired}"
    );
    assert_eq!(rows(&socket), committed);

    // Delete everything; nothing is left behind.
    let (status, err) = api.call(Method::DELETE, "/api/v1/projects/shop", None);
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a project with computes is not deleted: {err}"
    );
    api.ok(
        Method::DELETE,
        "/api/v1/projects/shop/compute/c1",
        None,
        StatusCode::OK,
    );
    let (status, _) = api.call(Method::GET, "/api/v1/projects/shop/compute/c1", None);
    assert_eq!(status, StatusCode::NOT_FOUND);
    api.ok(Method::DELETE, "/api/v1/projects/shop", None, StatusCode::OK);
    assert_eq!(
        api.ok(Method::GET, "/api/v1/projects", None, StatusCode::OK),
        json!([])
    );
    cp.stop();
    assert!(
        mounts_under(&ctl.home).is_empty(),
        "{:?}",
        mounts_under(&ctl.home)
    );
    assert!(
        processes_mentioning(&ctl.home).is_empty(),
        "{:?}",
        processes_mentioning(&ctl.home)
    );
    assert!(!ctl.home.join("computes/c1").exists());
}
