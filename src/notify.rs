//! Notifications: what a change did, sent to the webhooks people configured (a generic JSON
//! webhook, or a Slack-compatible incoming webhook, which Mattermost and Rocket.Chat accept too).
//!
//! Sending never blocks or slows a rollout: the reconciler hands each message to a bounded queue
//! without waiting (a full queue drops the message and counts it), and a background task delivers
//! it, each attempt with a timeout, retrying with backoff. Each (sink, change run, event, batch)
//! is sent once, however often the event is reported.

use crate::controller::metrics::Metrics;
use serde::{Deserialize, Serialize};
use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};

/// What can be notified.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// A change started its first batch.
    Started,
    /// A manual batch waits for approval.
    AwaitingApproval,
    /// A change was paused (by a person or by a failed batch with `onAnomaly: pause`).
    Paused,
    /// A change was rolled back.
    RolledBack,
    /// A change reached every pod.
    Succeeded,
    /// A newer template of the guarded workload replaced the change before it finished (the
    /// closing message of a run that `Started`).
    Superseded,
    /// The analysis could not run.
    AnalysisError,
    /// A guarded workload's template changed without graygate (the webhook was unreachable and
    /// its failurePolicy is Ignore): the change went out ungated.
    UnguardedChange,
}

impl Event {
    /// Every event, in the order people meet them.
    pub const ALL: [Event; 8] = [
        Event::Started,
        Event::AwaitingApproval,
        Event::Paused,
        Event::RolledBack,
        Event::Succeeded,
        Event::Superseded,
        Event::AnalysisError,
        Event::UnguardedChange,
    ];

    /// The event an Event reason of graygate's stands for, if it is one people are told of.
    pub fn from_reason(reason: &str) -> Option<Event> {
        Event::ALL.into_iter().find(|e| e.as_str() == reason)
    }

    /// Its name (also the Kubernetes Event reason).
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Started => "Started",
            Event::AwaitingApproval => "AwaitingApproval",
            Event::Paused => "Paused",
            Event::RolledBack => "RolledBack",
            Event::Succeeded => "Succeeded",
            Event::Superseded => "Superseded",
            Event::AnalysisError => "AnalysisError",
            Event::UnguardedChange => "UnguardedChange",
        }
    }

    fn icon(self) -> &'static str {
        match self {
            Event::Started => ":arrow_forward:",
            Event::AwaitingApproval => ":raised_hand:",
            Event::Paused => ":double_vertical_bar:",
            Event::RolledBack => ":x:",
            Event::Succeeded => ":white_check_mark:",
            Event::Superseded => ":fast_forward:",
            Event::AnalysisError => ":warning:",
            Event::UnguardedChange => ":rotating_light:",
        }
    }
}

/// How a sink wants its messages.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// graygate's JSON ([`Message`]).
    #[default]
    Webhook,
    /// A Slack incoming webhook (`{"text": …}` with mrkdwn links).
    Slack,
}

/// One place messages go.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sink {
    /// A name for logs and metrics.
    pub name: String,
    /// `webhook` (default) or `slack`.
    #[serde(default)]
    pub format: Format,
    /// The URL, written here (prefer `urlFile`: webhook URLs are secrets).
    #[serde(default)]
    pub url: Option<String>,
    /// A file holding the URL (a Secret's key mounted as a file; the chart does this).
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    /// Namespaces whose changes go here (empty: all).
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Events that go here (empty: all).
    #[serde(default)]
    pub events: Vec<Event>,
}

/// The notification settings (`graygate run --notifications FILE`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// The dashboard's address as people reach it; messages link to the change's page there.
    #[serde(default)]
    pub dashboard_url: Option<String>,
    /// Where messages go.
    #[serde(default)]
    pub sinks: Vec<Sink>,
}

/// A sink whose URL is known.
#[derive(Clone, Debug)]
struct Ready {
    sink: Sink,
    url: String,
}

impl Config {
    /// Read and check a config file, and read each sink's URL file; errors name the field.
    pub fn load(path: &std::path::Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--notifications {}: {e}", path.display()))?;
        Config::parse(&text)
            .and_then(|c| c.ready().map(|_| c))
            .map_err(|e| format!("--notifications {}: {e}", path.display()))
    }

    /// Parse and check a config (URL files are not read); errors name the field.
    pub fn parse(text: &str) -> Result<Config, String> {
        let c: Config = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        c.check()?;
        Ok(c)
    }

    fn check(&self) -> Result<(), String> {
        let mut names = HashSet::new();
        for (i, s) in self.sinks.iter().enumerate() {
            if s.name.trim().is_empty() {
                return Err(format!("sinks[{i}].name: must not be empty"));
            }
            if !names.insert(s.name.as_str()) {
                return Err(format!("sinks[{i}].name: {:?} is used twice", s.name));
            }
            if s.url.is_some() == s.url_file.is_some() {
                return Err(format!("sinks[{i}]: set exactly one of url and urlFile"));
            }
            if let Some(u) = &s.url {
                check_url(u).map_err(|e| format!("sinks[{i}].url: {e}"))?;
            }
        }
        if let Some(u) = &self.dashboard_url {
            check_url(u).map_err(|e| format!("dashboardUrl: {e}"))?;
        }
        Ok(())
    }

    /// The sinks with their URLs read (a file that cannot be read is an error naming the sink).
    fn ready(&self) -> Result<Vec<Ready>, String> {
        self.sinks
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let url = match (&s.url, &s.url_file) {
                    (Some(u), _) => u.clone(),
                    (None, Some(f)) => {
                        let u = std::fs::read_to_string(f)
                            .map_err(|e| format!("sinks[{i}].urlFile {}: {e}", f.display()))?
                            .trim()
                            .to_string();
                        check_url(&u)
                            .map_err(|e| format!("sinks[{i}].urlFile {}: {e}", f.display()))?;
                        u
                    }
                    (None, None) => return Err(format!("sinks[{i}]: no URL")),
                };
                Ok(Ready {
                    sink: s.clone(),
                    url,
                })
            })
            .collect()
    }
}

fn check_url(u: &str) -> Result<(), String> {
    let t = u.trim();
    if t.starts_with("https://") || t.starts_with("http://") {
        Ok(())
    } else {
        Err("must be an http:// or https:// URL".into())
    }
}

/// What happened, as a sink receives it in the `webhook` format.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    /// The event.
    pub event: Event,
    /// Namespace of the change (or workload).
    pub namespace: String,
    /// The ChangeRequest (for `UnguardedChange`: the workload).
    pub name: String,
    /// `Kind/name` of the workload.
    pub target: String,
    /// The change's phase after the event.
    pub phase: String,
    /// The batch in progress (0 before the first).
    pub batch: u32,
    /// The one-line verdict or reason.
    pub summary: String,
    /// When graygate saw it (RFC 3339).
    pub time: String,
    /// The change's page on the dashboard, when `dashboardUrl` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Identifies one run of the change (its start), so a retried change is told again.
    #[serde(skip)]
    pub run: String,
}

impl Message {
    fn key(&self, sink: &str) -> String {
        format!(
            "{sink}\u{0}{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}",
            self.namespace,
            self.name,
            self.run,
            self.event.as_str(),
            self.batch
        )
    }

    /// The body for a sink of this format.
    pub fn body(&self, format: Format) -> serde_json::Value {
        match format {
            Format::Webhook => serde_json::to_value(self).unwrap_or_default(),
            Format::Slack => {
                // Slack's mrkdwn: &, < and > are the characters to escape.
                let esc = |s: &str| {
                    s.replace('&', "&amp;")
                        .replace('<', "&lt;")
                        .replace('>', "&gt;")
                };
                let link = self
                    .url
                    .as_deref()
                    .map(|u| format!(" <{}|evidence>", u))
                    .unwrap_or_default();
                serde_json::json!({
                    "text": format!(
                        "{} *{}* `{}/{}` ({}): {}{}",
                        self.event.icon(),
                        self.event.as_str(),
                        esc(&self.namespace),
                        esc(&self.name),
                        esc(&self.target),
                        esc(&crate::util::trim_to(&self.summary, 500)),
                        link
                    )
                })
            }
        }
    }
}

/// Hands messages to the delivery task.
pub struct Notifier {
    tx: Option<mpsc::Sender<Message>>,
    dashboard_url: Option<String>,
    metrics: Arc<Metrics>,
}

/// Messages waiting to be sent at most.
const QUEUE: usize = 1024;
/// Deliveries in flight at most (each bounded by its timeout).
const IN_FLIGHT: usize = 16;
/// Keys remembered to send each message once.
const REMEMBERED: usize = 10_000;

/// How a delivery retries.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    /// Attempts in all.
    pub attempts: u32,
    /// Wait before the second attempt; doubles after each.
    pub first_backoff: Duration,
    /// Timeout of one attempt.
    pub timeout: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 6,
            first_backoff: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
        }
    }
}

impl Notifier {
    /// A notifier that sends nothing.
    pub fn disabled(metrics: Arc<Metrics>) -> Notifier {
        Notifier {
            tx: None,
            dashboard_url: None,
            metrics,
        }
    }

    /// Start delivering to the configured sinks (nothing to start without sinks).
    pub fn start(config: &Config, metrics: Arc<Metrics>, retry: Retry) -> Result<Notifier, String> {
        let sinks = config.ready()?;
        if sinks.is_empty() {
            return Ok(Notifier::disabled(metrics));
        }
        for s in &sinks {
            metrics.notification_sink(&s.sink.name);
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(deliver_all(rx, sinks, metrics.clone(), retry));
        Ok(Notifier {
            tx: Some(tx),
            dashboard_url: config
                .dashboard_url
                .as_ref()
                .map(|u| u.trim().trim_end_matches('/').to_string()),
            metrics,
        })
    }

    /// The dashboard page of a change, when a dashboard URL is configured.
    pub fn link(&self, namespace: &str, name: &str) -> Option<String> {
        let seg = crate::dashboard::html::seg;
        self.dashboard_url
            .as_ref()
            .map(|base| format!("{base}/ns/{}/changes/{}", seg(namespace), seg(name)))
    }

    /// Queue a message; never waits. A full queue drops it and counts the drop.
    pub fn notify(&self, msg: Message) {
        let Some(tx) = &self.tx else { return };
        if tx.try_send(msg).is_err() {
            self.metrics.notification("-", "dropped");
            tracing::warn!("notification queue full: a message was dropped");
        }
    }
}

async fn deliver_all(
    mut rx: mpsc::Receiver<Message>,
    sinks: Vec<Ready>,
    metrics: Arc<Metrics>,
    retry: Retry,
) {
    let http = match reqwest::Client::builder().timeout(retry.timeout).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "notifications: cannot build an HTTP client");
            return;
        }
    };
    let seen = Arc::new(Mutex::new((HashSet::new(), VecDeque::new())));
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(msg) = rx.recv().await {
        for s in &sinks {
            let wanted = (s.sink.namespaces.is_empty()
                || s.sink.namespaces.contains(&msg.namespace))
                && (s.sink.events.is_empty() || s.sink.events.contains(&msg.event));
            if !wanted || !first_time(&seen, msg.key(&s.sink.name)) {
                continue;
            }
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (http, s, msg, metrics) = (http.clone(), s.clone(), msg.clone(), metrics.clone());
            tokio::spawn(async move {
                let ok = deliver(&http, &s, &msg, &metrics, retry).await;
                metrics.notification(&s.sink.name, if ok { "sent" } else { "failed" });
                drop(permit);
            });
        }
    }
}

type Seen = Mutex<(HashSet<String>, VecDeque<String>)>;

/// Remember `key`; false when it was seen before.
fn first_time(seen: &Seen, key: String) -> bool {
    let Ok(mut g) = seen.lock() else { return true };
    let (set, order) = &mut *g;
    if !set.insert(key.clone()) {
        return false;
    }
    order.push_back(key);
    if order.len() > REMEMBERED
        && let Some(old) = order.pop_front()
    {
        set.remove(&old);
    }
    true
}

async fn deliver(
    http: &reqwest::Client,
    s: &Ready,
    msg: &Message,
    metrics: &Metrics,
    retry: Retry,
) -> bool {
    let body = msg.body(s.sink.format).to_string();
    let mut wait = retry.first_backoff;
    for attempt in 1..=retry.attempts.max(1) {
        let r = http
            .post(&s.url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        let (why, after) = match r {
            Ok(resp) if resp.status().is_success() => return true,
            Ok(resp) => {
                // 429 and 503 may say when to come back; at most a minute.
                let after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(|s| Duration::from_secs(s.min(60)));
                (format!("HTTP {}", resp.status().as_u16()), after)
            }
            Err(e) => (e.to_string(), None),
        };
        metrics.notification_error(&s.sink.name);
        tracing::warn!(sink = %s.sink.name, attempt, event = msg.event.as_str(), change = %format!("{}/{}", msg.namespace, msg.name), "notification not delivered: {why}");
        if attempt < retry.attempts {
            tokio::time::sleep(after.unwrap_or(wait)).await;
            wait = wait.saturating_mul(2);
        }
    }
    tracing::error!(sink = %s.sink.name, attempts = retry.attempts.max(1), event = msg.event.as_str(), change = %format!("{}/{}", msg.namespace, msg.name), "notification given up after its last try: not delivered");
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(event: Event) -> Message {
        Message {
            event,
            namespace: "shop".into(),
            name: "web-v2".into(),
            target: "Deployment/web".into(),
            phase: "RolledBack".into(),
            batch: 1,
            summary: "batch 1 failed: latency-p99 <2×> & more".into(),
            time: "2026-12-01T12:00:00Z".into(),
            url: Some("http://127.0.0.1:3100/ns/shop/changes/web-v2".into()),
            run: "t0".into(),
        }
    }

    #[test]
    fn a_bad_config_names_the_field() {
        let parse = |y: &str| Config::parse(y).map(|_| ());
        assert!(parse("sinks: [{name: a, url: 'http://x'}]").is_ok());
        let e = parse("sinks: [{name: a, format: teams, url: 'http://x'}]").unwrap_err();
        assert!(e.contains("sinks[0].format") && e.contains("teams"), "{e}");
        let e = parse("sinks: [{name: a, url: 'ftp://x'}]").unwrap_err();
        assert!(e.contains("sinks[0].url"), "{e}");
        let e = parse("sinks: [{name: a}]").unwrap_err();
        assert!(
            e.contains("sinks[0]: set exactly one of url and urlFile"),
            "{e}"
        );
        let e =
            parse("sinks: [{name: a, url: 'http://x'}, {name: a, url: 'http://y'}]").unwrap_err();
        assert!(e.contains("sinks[1].name"), "{e}");
        let e = parse("sinks: [{name: a, url: 'http://x', events: [Exploded]}]").unwrap_err();
        assert!(
            e.contains("sinks[0].events[0]") && e.contains("Exploded"),
            "{e}"
        );
        let e = parse("sink: []").unwrap_err();
        assert!(e.contains("sink"), "{e}");
    }

    #[test]
    fn slack_text_escapes_and_links_the_evidence() {
        let b = msg(Event::RolledBack).body(Format::Slack);
        let t = b["text"].as_str().unwrap();
        assert_eq!(
            t,
            ":x: *RolledBack* `shop/web-v2` (Deployment/web): batch 1 failed: latency-p99 &lt;2×&gt; &amp; more <http://127.0.0.1:3100/ns/shop/changes/web-v2|evidence>"
        );
        let w = msg(Event::RolledBack).body(Format::Webhook);
        assert_eq!(w["event"], "RolledBack");
        assert_eq!(w["summary"], "batch 1 failed: latency-p99 <2×> & more");
        assert!(w.get("run").is_none());
    }

    #[test]
    fn each_message_is_sent_once_per_sink_and_run() {
        let seen: Seen = Mutex::new((HashSet::new(), VecDeque::new()));
        let m = msg(Event::Started);
        assert!(first_time(&seen, m.key("a")));
        assert!(!first_time(&seen, m.key("a")));
        assert!(first_time(&seen, m.key("b")));
        let mut again = m.clone();
        again.run = "t1".into();
        assert!(
            first_time(&seen, again.key("a")),
            "a retried change is a new run"
        );
        let mut next = m.clone();
        next.batch = 2;
        assert!(first_time(&seen, next.key("a")));
    }

    #[test]
    fn reasons_map_to_events() {
        for e in Event::ALL {
            assert_eq!(Event::from_reason(e.as_str()), Some(e));
        }
        assert_eq!(Event::from_reason("BatchPassed"), None);
        // A superseded run that was told `Started` is told how it ended.
        assert_eq!(Event::from_reason("Superseded"), Some(Event::Superseded));
    }
}
