//! The simulated pods' own HTTP endpoints: `/pods/<ns>/<pod>/metrics`, and `/sd`, the
//! Prometheus HTTP service discovery list that attaches `namespace` and `pod` labels.

use crate::apps::Apps;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;
use std::sync::Arc;

#[derive(Clone)]
struct S {
    apps: Arc<Apps>,
    addr: String,
}

async fn metrics(State(s): State<S>, Path((ns, pod)): Path<(String, String)>) -> impl IntoResponse {
    match s.apps.metrics(&ns, &pod) {
        Some(text) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            text,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such pod").into_response(),
    }
}

async fn sd(State(s): State<S>) -> impl IntoResponse {
    let groups: Vec<_> = s
        .apps
        .running()
        .into_iter()
        .map(|(ns, pod, container)| {
            json!({
                "targets": [s.addr],
                "labels": {"__metrics_path__": format!("/pods/{ns}/{pod}/metrics"), "namespace": ns, "pod": pod, "container": container}
            })
        })
        .collect();
    (
        [(header::CONTENT_TYPE, "application/json")],
        json!(groups).to_string(),
    )
}

/// The router for apps listening at `addr` (host:port).
pub fn router(apps: Arc<Apps>, addr: String) -> axum::Router {
    axum::Router::new()
        .route("/sd", get(sd))
        .route("/pods/{ns}/{pod}/metrics", get(metrics))
        .with_state(S { apps, addr })
}
