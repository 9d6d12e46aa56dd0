//! `GET /metrics` (Prometheus text) and `GET /healthz` for the daemon, on the shared server
//! plumbing of `ibd-api`.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use ibd_api::server::{bytes_response, error_response, metrics_response, HttpResponse, Service};

use crate::metrics::Metrics;

pub struct MetricsService {
    pub metrics: Arc<Metrics>,
}

impl Service for MetricsService {
    fn endpoint(&self, req: &Request<Incoming>) -> &'static str {
        match req.uri().path() {
            "/metrics" => "metrics",
            "/healthz" => "healthz",
            _ => "other",
        }
    }

    async fn call(&self, req: Request<Incoming>) -> HttpResponse {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/metrics") => metrics_response(self.metrics.registry()),
            (&Method::GET, "/healthz") => bytes_response(StatusCode::OK, "text/plain", "ok\n"),
            _ => error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                "try GET /metrics or GET /healthz",
            ),
        }
    }
}
