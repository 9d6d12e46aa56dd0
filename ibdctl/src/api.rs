//! The control plane's HTTP API (`ibdctl serve`, documented in `docs/api.md`): a thin layer of
//! routes over [`Control`], on the services' shared server plumbing. The control plane also
//! supervises the computes it manages.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use ibd_api::server::{
    bytes_response, error_response, json_response, metrics_response, read_body, serve, HttpResponse,
    RequestMetrics, Service,
};
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;

use crate::binaries::IBDCTL;
use crate::control::Control;
use crate::error::{CtlError, Result};
use crate::model::{CreateCompute, CreateProject, StartCompute, StopCompute};
use crate::process;

const JSON_LIMIT: usize = 64 << 10;
/// How often the supervisor looks at the processes.
pub const SUPERVISE_EVERY: Duration = Duration::from_secs(2);

enum Route<'a> {
    Healthz,
    Metrics,
    Status,
    ListProjects,
    CreateProject,
    GetProject(&'a str),
    DeleteProject(&'a str),
    ListComputes(&'a str),
    CreateCompute(&'a str),
    GetCompute(&'a str, &'a str),
    DeleteCompute(&'a str, &'a str),
    StartCompute(&'a str, &'a str),
    StopCompute(&'a str, &'a str),
    MethodNotAllowed,
    Unknown,
}

fn route<'a>(method: &Method, path: &'a str) -> Route<'a> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (&Method::GET, ["healthz"]) => Route::Healthz,
        (&Method::GET, ["metrics"]) => Route::Metrics,
        (&Method::GET, ["api", "v1", "status"]) => Route::Status,
        (&Method::GET, ["api", "v1", "projects"]) => Route::ListProjects,
        (&Method::POST, ["api", "v1", "projects"]) => Route::CreateProject,
        (&Method::GET, ["api", "v1", "projects", p]) => Route::GetProject(p),
        (&Method::DELETE, ["api", "v1", "projects", p]) => Route::DeleteProject(p),
        (&Method::GET, ["api", "v1", "projects", p, "compute"]) => Route::ListComputes(p),
        (&Method::POST, ["api", "v1", "projects", p, "compute"]) => Route::CreateCompute(p),
        (&Method::GET, ["api", "v1", "projects", p, "compute", c]) => Route::GetCompute(p, c),
        (&Method::DELETE, ["api", "v1", "projects", p, "compute", c]) => Route::DeleteCompute(p, c),
        (&Method::POST, ["api", "v1", "projects", p, "compute", c, "start"]) => Route::StartCompute(p, c),
        (&Method::POST, ["api", "v1", "projects", p, "compute", c, "stop"]) => Route::StopCompute(p, c),
        (_, ["healthz" | "metrics"])
        | (_, ["api", "v1", "status" | "projects"])
        | (_, ["api", "v1", "projects", _])
        | (_, ["api", "v1", "projects", _, "compute"])
        | (_, ["api", "v1", "projects", _, "compute", _])
        | (_, ["api", "v1", "projects", _, "compute", _, "start" | "stop"]) => Route::MethodNotAllowed,
        _ => Route::Unknown,
    }
}

pub struct ApiService {
    control: Arc<Control>,
    registry: Registry,
}

impl ApiService {
    fn status_of(e: &CtlError) -> StatusCode {
        match e {
            CtlError::BadRequest(_) => StatusCode::BAD_REQUEST,
            CtlError::NotFound(_) => StatusCode::NOT_FOUND,
            CtlError::Conflict(_) => StatusCode::CONFLICT,
            CtlError::Missing(_) | CtlError::Failed(_) | CtlError::Io { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    fn answer<T: serde::Serialize>(status: StatusCode, result: Result<T>) -> HttpResponse {
        match result {
            Ok(value) => json_response(status, &value),
            Err(e) => {
                if matches!(
                    e,
                    CtlError::Missing(_) | CtlError::Failed(_) | CtlError::Io { .. }
                ) {
                    tracing::error!("{e}");
                }
                error_response(Self::status_of(&e), e.code(), e.to_string())
            }
        }
    }

    /// Runs `op` on compute `name` if it belongs to `project` (404 otherwise) and answers its
    /// result. (`op` is a future: nothing of it runs unless the check passes.)
    async fn on_compute<T: serde::Serialize>(
        &self,
        project: &str,
        name: &str,
        op: impl Future<Output = Result<T>>,
    ) -> HttpResponse {
        let owned = self.control.state().and_then(|state| {
            state.project(project)?;
            if state.compute(name)?.project == project {
                Ok(())
            } else {
                Err(CtlError::NotFound(format!(
                    "compute {name:?} does not belong to project {project:?}"
                )))
            }
        });
        let result = match owned {
            Ok(()) => op.await,
            Err(e) => Err(e),
        };
        Self::answer(StatusCode::OK, result)
    }
}

/// A JSON body, or the default value for an empty one.
async fn body_or_default<T: DeserializeOwned + Default>(
    req: Request<Incoming>,
) -> std::result::Result<T, HttpResponse> {
    let body = read_body(req, JSON_LIMIT).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&body).map_err(|e| {
        error_response(
            StatusCode::BAD_REQUEST,
            "bad_json",
            format!("invalid JSON body: {e}"),
        )
    })
}

impl Service for ApiService {
    fn endpoint(&self, req: &Request<Incoming>) -> &'static str {
        match route(req.method(), req.uri().path()) {
            Route::Healthz => "healthz",
            Route::Metrics => "metrics",
            Route::Status => "status",
            Route::ListProjects => "list_projects",
            Route::CreateProject => "create_project",
            Route::GetProject(_) => "get_project",
            Route::DeleteProject(_) => "delete_project",
            Route::ListComputes(_) => "list_computes",
            Route::CreateCompute(_) => "create_compute",
            Route::GetCompute(..) => "get_compute",
            Route::DeleteCompute(..) => "delete_compute",
            Route::StartCompute(..) => "start_compute",
            Route::StopCompute(..) => "stop_compute",
            Route::MethodNotAllowed => "method_not_allowed",
            Route::Unknown => "unknown",
        }
    }

    async fn call(&self, req: Request<Incoming>) -> HttpResponse {
        let path = req.uri().path().to_string();
        let control = &self.control;
        match route(req.method(), &path) {
            Route::Healthz => bytes_response(StatusCode::OK, "text/plain", "ok\n"),
            Route::Metrics => metrics_response(&self.registry),
            Route::Status => Self::answer(StatusCode::OK, control.status().await),
            Route::ListProjects => Self::answer(StatusCode::OK, control.list_projects()),
            Route::CreateProject => {
                match ibd_api::server::read_json::<CreateProject>(req, JSON_LIMIT).await {
                    Ok(body) => Self::answer(StatusCode::CREATED, control.create_project(&body).await),
                    Err(resp) => resp,
                }
            }
            Route::GetProject(p) => Self::answer(StatusCode::OK, control.project(p)),
            Route::DeleteProject(p) => Self::answer(
                StatusCode::OK,
                control
                    .delete_project(p)
                    .await
                    .map(|()| serde_json::json!({"deleted": p})),
            ),
            Route::ListComputes(p) => Self::answer(StatusCode::OK, control.list_computes(Some(p)).await),
            Route::CreateCompute(p) => match body_or_default::<CreateCompute>(req).await {
                Ok(body) => Self::answer(StatusCode::CREATED, control.create_compute(p, &body).await),
                Err(resp) => resp,
            },
            Route::GetCompute(p, c) => self.on_compute(p, c, control.compute_status(c)).await,
            Route::DeleteCompute(p, c) => {
                let deleted = async {
                    control
                        .delete_compute(c)
                        .await
                        .map(|()| serde_json::json!({"deleted": c}))
                };
                self.on_compute(p, c, deleted).await
            }
            Route::StartCompute(p, c) => match body_or_default::<StartCompute>(req).await {
                Ok(body) => self.on_compute(p, c, control.start_compute(c, body.fresh)).await,
                Err(resp) => resp,
            },
            Route::StopCompute(p, c) => match body_or_default::<StopCompute>(req).await {
                Ok(body) => self.on_compute(p, c, control.stop_compute(c, body.kill)).await,
                Err(resp) => resp,
            },
            Route::MethodNotAllowed => error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{} is not allowed on {path}", req.method()),
            ),
            Route::Unknown => error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no route {path} (see ibdctl/docs/api.md)"),
            ),
        }
    }
}

/// Runs the control plane of `control`'s home on `listen` until `shutdown`: the HTTP API and the
/// supervisor. Refuses if another control plane runs for the home; a taken port moves to the next
/// free one with a warning. The bound address goes to `control-plane.addr`.
pub async fn run(
    control: Arc<Control>,
    listen: SocketAddr,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let home = control.home().clone();
    let pid_file = home.control_pid();
    if let Some(pid) = process::running(&pid_file, IBDCTL).filter(|&p| p != std::process::id()) {
        return Err(CtlError::Conflict(format!(
            "a control plane already runs for {} (pid {pid}): stop it first (ibdctl down stops everything)",
            home.root().display()
        )));
    }
    let listener = match TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && listen.port() != 0 => {
            let (port, moved) = crate::ports::pick(listen.port(), "the control plane", &[])?;
            if let Some(moved) = moved {
                tracing::warn!("{moved}");
            }
            TcpListener::bind(SocketAddr::new(listen.ip(), port))
                .await
                .map_err(|e| CtlError::io(format!("cannot listen on {}:{port}", listen.ip()), e))?
        }
        Err(e) => return Err(CtlError::io(format!("cannot listen on {listen}"), e)),
    };
    let addr = listener
        .local_addr()
        .map_err(|e| CtlError::io("cannot read the bound address", e))?;
    process::write_pid(&pid_file, std::process::id())?;
    crate::store::write_atomically(&home.control_addr(), addr.to_string().as_bytes())?;
    tracing::info!(%addr, home = %home.root().display(), "control plane listening");

    let supervisor = {
        let control = control.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(SUPERVISE_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                control.supervise_once().await;
            }
        })
    };
    let mut registry = Registry::with_prefix("ibdctl");
    let metrics = RequestMetrics::register(&mut registry);
    let service = Arc::new(ApiService { control, registry });
    let served = serve(listener, service, metrics, shutdown).await;
    supervisor.abort();
    // Only our own files: a control plane started after us must keep its own.
    if process::read_pid(&pid_file) == Some(std::process::id()) {
        process::remove_file(&pid_file);
        process::remove_file(&home.control_addr());
    }
    served.map_err(|e| CtlError::io("the HTTP server failed", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_the_documented_paths() {
        let get = Method::GET;
        let post = Method::POST;
        assert!(matches!(
            route(&post, "/api/v1/projects/p1/compute"),
            Route::CreateCompute("p1")
        ));
        assert!(matches!(
            route(&get, "/api/v1/projects/p1/compute"),
            Route::ListComputes("p1")
        ));
        assert!(matches!(
            route(&post, "/api/v1/projects/p1/compute/c1/stop"),
            Route::StopCompute("p1", "c1")
        ));
        assert!(matches!(
            route(&Method::DELETE, "/api/v1/projects/p1/compute/c1"),
            Route::DeleteCompute("p1", "c1")
        ));
        assert!(matches!(
            route(&Method::PUT, "/api/v1/projects"),
            Route::MethodNotAllowed
        ));
        assert!(matches!(route(&get, "/api/v2/projects"), Route::Unknown));
        assert!(matches!(route(&get, "/api/v1/status/"), Route::Status));
    }
}
