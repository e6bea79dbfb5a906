//! The one Prometheus HTTP API call graygate makes, `GET /api/v1/query_range`, with the response
//! read up to a size limit and decoded here: a query that matches far more series than a
//! judgement needs (a missing `{{pods}}` filter, say) is refused with an error naming the field,
//! instead of filling graygate's memory.

use serde::Deserialize;
use std::collections::BTreeMap;

/// The most a query_range response may be (bytes). A judgement's query asks for one series per
/// pod of one group over one window: a few hundred kilobytes even for a large workload.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// A Prometheus server.
#[derive(Clone, Debug)]
pub struct Prom {
    http: reqwest::Client,
    base: String,
    limit: usize,
}

/// Why a query gave no data.
#[derive(Debug, PartialEq)]
pub enum PromError {
    /// Prometheus refused the query itself (`errorType: bad_data`): the spec is wrong.
    BadData(String),
    /// The answer was larger than the limit: the query matches too much.
    TooLarge(usize),
    /// Anything else: unreachable, timed out, failed, or answered something that is not the API.
    Unavailable(String),
}

impl std::fmt::Display for PromError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PromError::BadData(m) => write!(f, "Prometheus rejected the query: {m}"),
            PromError::TooLarge(limit) => write!(
                f,
                "Prometheus answered more than {} MiB: the query matches far more series than one per pod (is {{{{pods}}}} in its selector?)",
                limit / (1024 * 1024)
            ),
            PromError::Unavailable(m) => f.write_str(m),
        }
    }
}

/// One series of a range query: its labels and (Unix seconds, value) samples.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// The series' labels.
    pub labels: BTreeMap<String, String>,
    /// Its samples, oldest first.
    pub samples: Vec<(f64, f64)>,
}

impl Prom {
    /// A server at `url` (`http://` or `https://`), queried with `http`.
    pub fn new(http: reqwest::Client, url: &str) -> Result<Prom, String> {
        let base = url.trim().trim_end_matches('/').to_string();
        let rest = base
            .strip_prefix("http://")
            .or_else(|| base.strip_prefix("https://"))
            .ok_or("must be an http:// or https:// URL")?;
        if rest.is_empty() {
            return Err("has no host".into());
        }
        Ok(Prom {
            http,
            base,
            limit: MAX_RESPONSE_BYTES,
        })
    }

    /// The same server with another response limit (tests).
    pub fn with_limit(mut self, limit: usize) -> Prom {
        self.limit = limit;
        self
    }

    /// `query_range` from `start` to `end` (Unix seconds) every `step` seconds.
    pub async fn query_range(
        &self,
        token: Option<&str>,
        query: &str,
        start: i64,
        end: i64,
        step: f64,
    ) -> Result<Vec<Series>, PromError> {
        let mut req = self
            .http
            .post(format!("{}/api/v1/query_range", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&[
                ("query", query),
                ("start", &start.to_string()),
                ("end", &end.to_string()),
                ("step", &step.to_string()),
            ]));
        if let Some(t) = token {
            let h =
                reqwest::header::HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| {
                    PromError::Unavailable("the bearer token is not a valid header value".into())
                })?;
            req = req.header(reqwest::header::AUTHORIZATION, h);
        }
        let mut resp = req
            .send()
            .await
            .map_err(|e| PromError::Unavailable(e.to_string()))?;
        let status = resp.status().as_u16();
        if resp.content_length().is_some_and(|n| n > self.limit as u64) {
            return Err(PromError::TooLarge(self.limit));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| PromError::Unavailable(e.to_string()))?
        {
            if body.len() + chunk.len() > self.limit {
                return Err(PromError::TooLarge(self.limit));
            }
            body.extend_from_slice(&chunk);
        }
        decode(status, &body)
    }
}

/// `application/x-www-form-urlencoded` of the pairs.
fn form(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        let mut out = String::with_capacity(s.len());
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    out.push(b as char)
                }
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data {
    result_type: String,
    #[serde(default)]
    result: Vec<RawSeries>,
}

#[derive(Deserialize)]
struct RawSeries {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    #[serde(default)]
    values: Vec<(f64, String)>,
}

/// Decode a query_range answer given with HTTP `status`. Values Prometheus writes as strings
/// (`"NaN"`, `"+Inf"`) become those floats; a sample whose value is no number is skipped.
pub fn decode(status: u16, body: &[u8]) -> Result<Vec<Series>, PromError> {
    let env: Envelope = match serde_json::from_slice(body) {
        Ok(e) => e,
        Err(e) => {
            let head = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return Err(PromError::Unavailable(format!(
                "HTTP {status}: not a Prometheus API answer ({e}): {head:?}"
            )));
        }
    };
    if env.status != "success" {
        let msg = env.error.unwrap_or_else(|| format!("HTTP {status}"));
        return Err(match env.error_type.as_deref() {
            Some("bad_data") => PromError::BadData(msg),
            t => PromError::Unavailable(format!("{} ({})", msg, t.unwrap_or("error"))),
        });
    }
    let Some(data) = env.data else {
        return Err(PromError::Unavailable(format!(
            "HTTP {status}: success without data"
        )));
    };
    if data.result_type != "matrix" {
        return Err(PromError::Unavailable(format!(
            "a range query answered a {} instead of a matrix",
            data.result_type
        )));
    }
    Ok(data
        .result
        .into_iter()
        .map(|s| Series {
            labels: s.metric,
            samples: s
                .values
                .into_iter()
                .filter_map(|(t, v)| Some((t, v.trim().parse::<f64>().ok()?)))
                .collect(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_matrix_decodes_with_its_special_values() {
        let body = br#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{"pod":"web-1"},"values":[[1700000000,"0.5"],[1700000015.5,"NaN"],[1700000030,"+Inf"],[1700000045,"x"]]},
            {"metric":{},"values":[]}]}}"#;
        let s = decode(200, body).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].labels["pod"], "web-1");
        assert_eq!(s[0].samples.len(), 3, "the unparsable sample is skipped");
        assert_eq!(s[0].samples[0], (1_700_000_000.0, 0.5));
        assert!(s[0].samples[1].1.is_nan());
        assert_eq!(s[0].samples[2].1, f64::INFINITY);
    }

    #[test]
    fn errors_say_which_kind_they_are() {
        let bad = br#"{"status":"error","errorType":"bad_data","error":"parse error at char 5"}"#;
        assert_eq!(
            decode(400, bad),
            Err(PromError::BadData("parse error at char 5".into()))
        );
        let busy = br#"{"status":"error","errorType":"unavailable","error":"too many queries"}"#;
        assert!(
            matches!(decode(503, busy), Err(PromError::Unavailable(m)) if m.contains("too many queries"))
        );
        assert!(
            matches!(decode(502, b"<html>bad gateway</html>"), Err(PromError::Unavailable(m)) if m.contains("HTTP 502"))
        );
        let vector = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert!(
            matches!(decode(200, vector), Err(PromError::Unavailable(m)) if m.contains("vector"))
        );
    }

    #[test]
    fn the_form_encodes_a_query() {
        assert_eq!(
            form(&[("query", "rate(x{pod=~\"a|b\"}[1m]) > 0"), ("step", "1.5")]),
            "query=rate%28x%7Bpod%3D~%22a%7Cb%22%7D%5B1m%5D%29+%3E+0&step=1.5"
        );
    }

    #[tokio::test]
    async fn an_answer_above_the_limit_is_refused() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // A server answering 3 MB of series, without a Content-Length (chunked by closing).
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let series = r#"{"metric":{"pod":"p"},"values":[[1,"1"]]},"#.repeat(70_000);
                let body = format!(
                    r#"{{"status":"success","data":{{"resultType":"matrix","result":[{}]}}}}"#,
                    series.trim_end_matches(',')
                );
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n";
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(body.as_bytes()).await;
            }
        });
        let _ = rustls::crypto::ring::default_provider().install_default();
        let prom = Prom::new(reqwest::Client::new(), &format!("http://{addr}"))
            .unwrap()
            .with_limit(1024 * 1024);
        let r = prom.query_range(None, "up", 0, 60, 15.0).await;
        assert_eq!(r, Err(PromError::TooLarge(1024 * 1024)));
        assert!(r.unwrap_err().to_string().contains("more than 1 MiB"));
        let roomy = prom.with_limit(MAX_RESPONSE_BYTES);
        let ok = roomy.query_range(None, "up", 0, 60, 15.0).await.unwrap();
        assert_eq!(ok.len(), 70_000);
    }
}
