//! The write fence: whether this replica may write now. Below both the decision (`controller`,
//! which renews it with the Lease) and the strategies (`rollout`, which check it before each
//! write), so neither imports the other for it.
//!
//! Asking the fence before a write is not enough on its own: between the question and the
//! moment the request leaves the process lie the client's own retries (kube's client re-sends a
//! write answered 429 or 503 after the server's `Retry-After`, which can be seconds), a connection
//! to open and a busy CPU. So every write of the leader goes through [`fenced_client`], whose
//! stack asks the fence again for *each attempt*, as it is handed to the connection. A request
//! sent just before the fence closes may still reach the API server after; no client can
//! prevent that (abandoning it would not call it back), and the fence's margin (writes start
//! only until a fifth of the Lease before its end) is there for it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::BoxError;

/// A write refused because this replica may no longer hold the Lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not the leader (the Lease may have expired): write refused")]
pub struct NotLeader;

/// The write fence of one replica: writes are allowed only while the Lease this replica last
/// renewed is surely still valid, measured on the monotonic clock from *before* the renewal
/// request (a process that was frozen, paused or partitioned finds its time ran out when it
/// wakes, before anything it computed earlier reaches the API server).
#[derive(Debug)]
pub struct Fence {
    valid_until: std::sync::Mutex<Option<tokio::time::Instant>>,
    always: bool,
}

impl Fence {
    /// A fence that allows nothing until the first renewal.
    pub fn new() -> Self {
        Fence {
            valid_until: std::sync::Mutex::new(None),
            always: false,
        }
    }

    /// A fence that always allows (tests and single-writer tools).
    pub fn open() -> Self {
        Fence {
            valid_until: std::sync::Mutex::new(None),
            always: true,
        }
    }

    /// The Lease was renewed by a request sent at `sent`: writes are allowed until
    /// `sent + duration − margin`, the margin covering clock drift between replicas.
    pub fn renewed(&self, sent: tokio::time::Instant, duration: Duration) {
        let margin = (duration / 5).max(Duration::from_millis(200)).min(duration);
        if let Ok(mut v) = self.valid_until.lock() {
            *v = Some(sent + (duration - margin));
        }
    }

    /// Leadership is gone: refuse writes at once.
    pub fn revoke(&self) {
        if let Ok(mut v) = self.valid_until.lock() {
            *v = None;
        }
    }

    /// May this replica write now?
    pub fn allows(&self) -> bool {
        self.always
            || self
                .valid_until
                .lock()
                .ok()
                .and_then(|v| *v)
                .is_some_and(|until| tokio::time::Instant::now() < until)
    }

    /// Err(NotLeader) unless writes are allowed.
    pub fn check(&self) -> Result<(), NotLeader> {
        if self.allows() {
            Ok(())
        } else {
            Err(NotLeader)
        }
    }
}

/// A Kubernetes client whose every write (any method but GET, HEAD and OPTIONS) is fenced
/// attempt by attempt: the fence is asked as each attempt is sent, including the client's
/// retries of 429, 503 and 504 answers, and a refused attempt ends the call with [`NotLeader`].
/// Reads and watches pass untouched.
///
/// kube's own stack retries below the point any layer added to it could reach, so this one is
/// built from kube's parts with the retry above the fence: base URI, authentication, the
/// configured headers, retries (kube's policy, honouring `Retry-After`), the fence, HTTPS.
pub fn fenced_client(cfg: kube::Config, fence: Arc<Fence>) -> Result<kube::Client, kube::Error> {
    use kube::client::ConfigExt;
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(cfg.connect_timeout);
    let https = cfg.rustls_https_connector_with_connector(http)?;
    let hyper = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(https);
    let service = tower::ServiceBuilder::new()
        .layer(cfg.base_uri_layer())
        .option_layer(cfg.auth_layer()?)
        .layer(cfg.extra_headers_layer()?)
        .layer(tower::retry::RetryLayer::new(
            kube::client::retry::RetryPolicy::server_retry(),
        ))
        .layer(FenceLayer(fence))
        .service(hyper);
    Ok(kube::Client::new(service, cfg.default_namespace))
}

/// The tower layer of [`fenced_client`].
#[derive(Clone)]
pub struct FenceLayer(pub Arc<Fence>);

impl<S> tower::Layer<S> for FenceLayer {
    type Service = Fenced<S>;
    fn layer(&self, inner: S) -> Fenced<S> {
        Fenced {
            inner,
            fence: self.0.clone(),
        }
    }
}

/// A service that sends a write only while the fence allows.
#[derive(Clone)]
pub struct Fenced<S> {
    inner: S,
    fence: Arc<Fence>,
}

type Boxed<R> = Pin<Box<dyn Future<Output = Result<R, BoxError>> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for Fenced<S>
where
    S: tower::Service<http::Request<B>, Response = R>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    R: Send + 'static,
{
    type Response = R;
    type Error = BoxError;
    type Future = Boxed<R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<B>) -> Boxed<R> {
        if !is_read(req.method()) && !self.fence.allows() {
            tracing::debug!(method = %req.method(), uri = %req.uri(), "write not sent: the Lease is not surely held");
            return Box::pin(std::future::ready(Err(NotLeader.into())));
        }
        let answer = self.inner.call(req);
        Box::pin(async move { answer.await.map_err(Into::into) })
    }
}

fn is_read(m: &http::Method) -> bool {
    matches!(
        *m,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    )
}

/// Whether a client error is the fence refusing (so the caller treats it as "not the leader",
/// not as a failure of the object).
pub fn is_not_leader(e: &kube::Error) -> bool {
    match e {
        kube::Error::Service(inner) => {
            let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(inner.as_ref());
            while let Some(err) = cur {
                if err.is::<NotLeader>() {
                    return true;
                }
                cur = err.source();
            }
            false
        }
        _ => false,
    }
}

impl Default for Fence {
    fn default() -> Self {
        Fence::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A loopback HTTP server that records the method of every request; the first write is
    /// answered 429 with `Retry-After: 1`, later writes 201, reads 200.
    async fn server() -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Ok(n) = s.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_string();
                        let Some(head_end) = text.find("\r\n\r\n") else {
                            continue;
                        };
                        let len = text[..head_end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .and_then(|v| v.trim().parse::<usize>().ok())
                            })
                            .unwrap_or(0);
                        if buf.len() < head_end + 4 + len {
                            continue;
                        }
                        let method = text.split(' ').next().unwrap_or("").to_string();
                        let writes_before = {
                            let mut seen = log.lock().unwrap();
                            let n = seen.iter().filter(|m| *m != "GET").count();
                            seen.push(method.clone());
                            n
                        };
                        buf.drain(..head_end + 4 + len);
                        let answer = if method == "GET" {
                            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}".to_string()
                        } else if writes_before == 0 {
                            "HTTP/1.1 429 Too Many Requests\r\nretry-after: 1\r\ncontent-length: 2\r\n\r\n{}".to_string()
                        } else {
                            "HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n{}".to_string()
                        };
                        if s.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (format!("http://{addr}"), seen)
    }

    fn client(url: &str, fence: &Arc<Fence>) -> kube::Client {
        fenced_client(kube::Config::new(url.parse().unwrap()), fence.clone()).unwrap()
    }

    fn post() -> http::Request<Vec<u8>> {
        http::Request::post("/api/v1/namespaces/x/configmaps")
            .body(b"{}".to_vec())
            .unwrap()
    }

    fn get() -> http::Request<Vec<u8>> {
        http::Request::get("/api/v1/namespaces/x/configmaps/a")
            .body(Vec::new())
            .unwrap()
    }

    #[tokio::test]
    async fn a_write_retried_after_429_goes_out_while_the_fence_holds() {
        let (url, seen) = server().await;
        let fence = Arc::new(Fence::new());
        fence.renewed(tokio::time::Instant::now(), Duration::from_secs(30));
        let r = client(&url, &fence)
            .request::<serde_json::Value>(post())
            .await;
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(*seen.lock().unwrap(), vec!["POST", "POST"]);
    }

    #[tokio::test]
    async fn a_retry_is_not_sent_once_the_fence_has_closed() {
        let (url, seen) = server().await;
        let fence = Arc::new(Fence::new());
        // Writes allowed for 0.8 s; the server asks to come back after 1 s.
        fence.renewed(tokio::time::Instant::now(), Duration::from_secs(1));
        let c = client(&url, &fence);
        let err = c.request::<serde_json::Value>(post()).await.unwrap_err();
        assert!(is_not_leader(&err), "{err:?}");
        assert_eq!(*seen.lock().unwrap(), vec!["POST"], "the retry was sent");
        // Reads pass whatever the fence says.
        c.request::<serde_json::Value>(get()).await.unwrap();
        assert_eq!(*seen.lock().unwrap(), vec!["POST", "GET"]);
    }

    #[tokio::test]
    async fn nothing_is_written_without_the_lease() {
        let (url, seen) = server().await;
        let fence = Arc::new(Fence::new());
        let c = client(&url, &fence);
        let err = c.request::<serde_json::Value>(post()).await.unwrap_err();
        assert!(is_not_leader(&err), "{err:?}");
        fence.renewed(tokio::time::Instant::now(), Duration::from_secs(30));
        fence.revoke();
        let err = c.request::<serde_json::Value>(post()).await.unwrap_err();
        assert!(is_not_leader(&err), "{err:?}");
        assert!(seen.lock().unwrap().is_empty());
        // An open fence (tools and tests) always writes, retries included.
        let open = client(&url, &Arc::new(Fence::open()));
        open.request::<serde_json::Value>(post()).await.unwrap();
        assert_eq!(*seen.lock().unwrap(), vec!["POST", "POST"]);
    }
}
