//! Guarded workloads: the admission webhook that holds template changes, its certificate, and
//! the ChangePolicy controller that turns each held template into a ChangeRequest.

pub mod certs;
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
    axum::Json(doc): axum::Json<serde_json::Value>,
) -> axum::Json<serde_json::Value> {
    let answer = webhook::respond(&doc, &h.trusted);
    if answer.pointer("/response/patch").is_some() {
        let kind = doc
            .pointer("/request/kind/kind")
            .and_then(|k| k.as_str())
            .unwrap_or("");
        h.metrics.held(kind);
    }
    axum::Json(answer)
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
