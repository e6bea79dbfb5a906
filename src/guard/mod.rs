//! Guarded workloads: the admission webhook that holds template changes, its certificate, and
//! the ChangePolicy controller that turns each held template into a ChangeRequest.

pub mod certs;
pub mod keep;
pub mod pin;
pub mod policy;
pub mod webhook;

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use std::sync::Arc;

#[derive(Clone)]
struct Hook {
    trusted: Arc<Vec<String>>,
    metrics: Arc<crate::controller::metrics::Metrics>,
}

async fn mutate(
    State(h): State<Hook>,
    body: axum::body::Bytes,
) -> Result<axum::Json<serde_json::Value>, (axum::http::StatusCode, String)> {
    // Timed from the received body to the answer: decoding, the review and encoding.
    let t0 = std::time::Instant::now();
    let doc: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        (
            axum::http::StatusCode::BAD_REQUEST,
            format!("the body is not an AdmissionReview (JSON): {e}"),
        )
    })?;
    let (answer, holds) = webhook::respond_counted(&doc, &h.trusted);
    if holds {
        let kind = doc
            .pointer("/request/kind/kind")
            .and_then(|k| k.as_str())
            .unwrap_or("");
        h.metrics.held(kind);
    }
    h.metrics
        .admission_duration
        .observe(t0.elapsed().as_secs_f64());
    Ok(axum::Json(answer))
}

/// Serve the webhook (`POST /mutate`) over TLS on `listener` until the process ends. Every
/// replica serves it, leader or not: admission must not wait for an election.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Arc<certs::CertStore>,
    trusted: Vec<String>,
    metrics: Arc<crate::controller::metrics::Metrics>,
) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = match rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(b) => b.with_no_client_auth().with_cert_resolver(store),
        Err(e) => {
            tracing::error!(error = %e, "webhook TLS configuration");
            return;
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let app = Router::new()
        .route("/mutate", post(mutate))
        .with_state(Hook {
            trusted: Arc::new(trusted),
            metrics,
        });
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let io = hyper_util::rt::TokioIo::new(tls);
            let service = hyper_util::service::TowerToHyperService::new(app);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_review_is_timed_and_a_body_that_is_not_json_is_refused() {
        let metrics = Arc::new(crate::controller::metrics::Metrics::default());
        let hook = Hook {
            trusted: Arc::new(Vec::new()),
            metrics: metrics.clone(),
        };
        let review = serde_json::json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {"uid": "u1", "kind": {"kind": "ConfigMap"}, "operation": "CREATE",
                        "object": {}, "userInfo": {"username": "alice"}},
        });
        let answer = mutate(State(hook.clone()), review.to_string().into())
            .await
            .unwrap();
        assert_eq!(answer.0["response"]["uid"], "u1");
        assert_eq!(answer.0["response"]["allowed"], true);
        let err = mutate(State(hook), "{not json".into()).await.unwrap_err();
        assert_eq!(err.0, axum::http::StatusCode::BAD_REQUEST);
        assert!(err.1.contains("AdmissionReview"), "{}", err.1);
        let text = metrics.encode();
        assert!(
            text.contains("graygate_webhook_admission_duration_seconds_count 1"),
            "{text}"
        );
    }
}
