//! A fault-injecting proxy between graygate and the real API server. graygate's kubeconfig points
//! here (plain HTTP on loopback); every request is recorded, may be delayed, failed with 500, 429
//! or 503 (the last two with `Retry-After`), and watch streams may be cut after a while — the
//! faults a busy or restarting API server produces. The harness itself talks to the API server
//! directly.

use crate::faults::{Faults, Injected};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

/// One request graygate made.
#[derive(Clone, Debug)]
pub struct AuditEntry {
    /// HTTP method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Query string.
    pub query: String,
    /// Request content type.
    pub content_type: String,
    /// User agent.
    pub user_agent: String,
    /// Response status.
    pub status: u16,
    /// Request body (patches), trimmed.
    pub body: String,
    /// When the request reached the proxy.
    pub arrived: std::time::Instant,
    /// When the proxy sent it on to the API server (after any injected latency; for a failed
    /// one, when it was failed).
    pub forwarded: std::time::Instant,
    /// When the API server's answer (its status line and headers) came back.
    pub answered: std::time::Instant,
}

#[derive(Clone)]
struct S {
    upstream: String,
    http: reqwest::Client,
    faults: Arc<Faults>,
    audit: Arc<Mutex<Vec<AuditEntry>>>,
}

/// A running proxy.
pub struct ApiProxy {
    /// Its URL (`http://127.0.0.1:PORT`).
    pub url: String,
    /// The fault knobs.
    pub faults: Arc<Faults>,
    /// Every request that went through.
    pub audit: Arc<Mutex<Vec<AuditEntry>>>,
    task: JoinHandle<()>,
}

impl Drop for ApiProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const HOP_BY_HOP: [&str; 5] = [
    "connection",
    "transfer-encoding",
    "keep-alive",
    "upgrade",
    "content-length",
];

impl ApiProxy {
    /// Start a proxy to `upstream` (the API server's https URL; its certificate is not checked,
    /// as a test-local self-signed one).
    pub async fn start(upstream: &str) -> anyhow::Result<ApiProxy> {
        graygate::install_crypto_provider();
        let http = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .build()?;
        let faults = Arc::new(Faults::default());
        let audit = Arc::new(Mutex::new(Vec::new()));
        let state = S {
            upstream: upstream.trim_end_matches('/').to_string(),
            http,
            faults: faults.clone(),
            audit: audit.clone(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let router = axum::Router::new().fallback(forward).with_state(state);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(ApiProxy {
            url,
            faults,
            audit,
            task,
        })
    }
}

fn record(s: &S, entry: AuditEntry) {
    if let Ok(mut a) = s.audit.lock() {
        a.push(entry);
    }
}

async fn forward(State(s): State<S>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    let header_str = |h: header::HeaderName| {
        parts
            .headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let content_type = header_str(header::CONTENT_TYPE);
    let user_agent = header_str(header::USER_AGENT);
    let body = axum::body::to_bytes(body, 64 << 20)
        .await
        .unwrap_or_default();
    let mut entry = AuditEntry {
        method: parts.method.to_string(),
        path: path.clone(),
        query: query.clone(),
        content_type,
        user_agent,
        status: 0,
        body: String::from_utf8_lossy(&body[..body.len().min(4096)]).into_owned(),
        arrived: std::time::Instant::now(),
        forwarded: std::time::Instant::now(),
        answered: std::time::Instant::now(),
    };
    let latency = s.faults.latency_ms();
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    entry.forwarded = std::time::Instant::now();
    let watching = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    if let Injected::Fail(code) = s.faults.next_for(parts.method.as_str(), &path, watching) {
        entry.status = code;
        record(&s, entry);
        let reason = match code {
            429 => "TooManyRequests",
            503 => "ServiceUnavailable",
            _ => "InternalError",
        };
        let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("injected fault ({code})"), "reason": reason, "code": code});
        let mut resp = (
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            [(header::CONTENT_TYPE, "application/json")],
            status.to_string(),
        )
            .into_response();
        if code != 500 {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        return resp;
    }
    let url = if query.is_empty() {
        format!("{}{path}", s.upstream)
    } else {
        format!("{}{path}?{query}", s.upstream)
    };
    let mut out = s.http.request(parts.method.clone(), &url).body(body);
    for (k, v) in &parts.headers {
        if k != header::HOST && !HOP_BY_HOP.contains(&k.as_str()) {
            out = out.header(k, v);
        }
    }
    let upstream = match out.send().await {
        Ok(r) => r,
        Err(e) => {
            entry.status = 502;
            entry.answered = std::time::Instant::now();
            record(&s, entry);
            return (StatusCode::BAD_GATEWAY, format!("proxy: {e}")).into_response();
        }
    };
    entry.status = upstream.status().as_u16();
    entry.answered = std::time::Instant::now();
    record(&s, entry);
    let mut resp = Response::builder().status(upstream.status().as_u16());
    for (k, v) in upstream.headers() {
        if !HOP_BY_HOP.contains(&k.as_str()) {
            resp = resp.header(
                HeaderName::from_bytes(k.as_ref()).expect("header name"),
                v.as_bytes(),
            );
        }
    }
    let cut = s.faults.watch_drop_ms();
    let stream = upstream.bytes_stream();
    let body = if watching && cut > 0 {
        let deadline = tokio::time::sleep(Duration::from_millis(cut));
        Body::from_stream(stream.take_until(deadline))
    } else {
        Body::from_stream(stream)
    };
    resp.body(body)
        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}

/// A TCP forwarder standing in for a Service in front of several replicas (the webhook's):
/// each connection goes to the first backend port, in order, that accepts it — as a Service
/// sends traffic only to ready endpoints, a replica that does not listen yet gets none.
pub async fn service(port: u16, backends: Vec<u16>) -> anyhow::Result<JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    Ok(tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let backends = backends.clone();
            tokio::spawn(async move {
                for b in backends {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", b)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                        return;
                    }
                }
            });
        }
    }))
}
