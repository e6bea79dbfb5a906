//! Kubernetes Events, written beside the reconciles instead of inside them.
//!
//! An Event is a write like any other and costs an API round trip, more when the API server is
//! busy — which is when a thousand changes start at once. Written inside the reconcile, it held
//! up the status write and the next step of the change it described (the slowest 1% of
//! reconciles in the scale run were the ones that wrote Events). Here a reconcile hands the
//! Event to a queue and goes on; a few writers drain the queue. Events about one object keep
//! their order (they go to the same writer); a writer writes only while this replica holds the
//! Lease (the fence is asked again at the moment of writing, so an Event queued by a leader that
//! has since stepped down is never written); an Event refused by the API server is tried once
//! more; every Event ends counted in `graygate_events_total` as recorded or dropped.
//!
//! The Events are core/v1 Events, written as client-go's `tools/record` recorder writes them,
//! with `firstTimestamp`, `lastTimestamp` and `count` (what `kubectl describe` and `kubectl get
//! events --sort-by=.lastTimestamp` order by) beside `eventTime`, the reporting controller and
//! instance and the action. The events.k8s.io/v1 API refuses those fields on create ("needs to
//! be unset"), and with `eventTime` alone kubectl lists Events out of order and shows `<nil>`.
//! The same Event again within 6 minutes (same type, action, reason and object) counts up on the
//! first one, with its `lastTimestamp` moved on.

use super::lease::Fence;
use super::metrics::Metrics;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::core::v1::{Event as K8sEvent, EventSource};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
pub use kube::runtime::events::{Event, EventType, Reporter};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};

/// Writers draining the queue (each writes one Event at a time).
const WRITERS: usize = 4;
/// Events a writer holds before more are dropped (counted) rather than queued.
const CAPACITY: usize = 4096;
/// The pause before an Event the API server refused is tried again.
const RETRY_AFTER: Duration = Duration::from_millis(250);

type Item = (Event, ObjectReference);

/// How long a repeated Event joins the series of the first.
const SERIES_WINDOW: std::time::Duration = std::time::Duration::from_secs(360);

/// Writes Events about objects as `reporter`.
#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    reporter: Reporter,
    recent: Arc<tokio::sync::Mutex<HashMap<String, K8sEvent>>>,
}

/// What makes two Events the same one seen again: type, action, reason, the object it is about
/// and the object it relates to (a hold's Event relates to its own change: two holds are two
/// Events, never one counted twice).
fn series_key(ev: &Event, regarding: &ObjectReference) -> String {
    let object = |o: Option<&ObjectReference>| {
        o.map(|o| {
            format!(
                "{}/{}/{}/{}",
                o.kind.as_deref().unwrap_or_default(),
                o.namespace.as_deref().unwrap_or_default(),
                o.name.as_deref().unwrap_or_default(),
                o.uid.as_deref().unwrap_or_default(),
            )
        })
        .unwrap_or_default()
    };
    format!(
        "{:?}|{}|{}|{}|{}",
        ev.type_,
        ev.action,
        ev.reason,
        object(Some(regarding)),
        object(ev.secondary.as_ref()),
    )
}

/// The Event to write for `ev` about `regarding` at `now`: a new one, or `seen` (the same
/// Event written before, within [`SERIES_WINDOW`]) counted once more, its last time moved on.
pub fn build(
    reporter: &Reporter,
    ev: &Event,
    regarding: &ObjectReference,
    now: Timestamp,
    seen: Option<&K8sEvent>,
) -> K8sEvent {
    if let Some(prev) = seen.filter(|e| {
        e.last_timestamp
            .as_ref()
            .is_some_and(|t| now.duration_since(t.0).unsigned_abs() < SERIES_WINDOW)
    }) {
        let mut e = prev.clone();
        e.count = Some(prev.count.unwrap_or(1) + 1);
        e.last_timestamp = Some(Time(now));
        e.message = ev.note.clone();
        return e;
    }
    let instance = reporter
        .instance
        .clone()
        .unwrap_or_else(|| reporter.controller.clone());
    K8sEvent {
        action: Some(ev.action.clone()),
        reason: Some(ev.reason.clone()),
        message: ev.note.clone(),
        type_: Some(
            match ev.type_ {
                EventType::Normal => "Normal",
                EventType::Warning => "Warning",
            }
            .into(),
        ),
        event_time: Some(MicroTime(now)),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        count: Some(1),
        source: Some(EventSource {
            component: Some(reporter.controller.clone()),
            host: None,
        }),
        involved_object: regarding.clone(),
        related: ev.secondary.clone(),
        reporting_component: Some(reporter.controller.clone()),
        reporting_instance: Some(instance),
        metadata: ObjectMeta {
            namespace: regarding.namespace.clone(),
            name: Some(format!(
                "{}.{:x}",
                regarding.name.as_deref().unwrap_or(&reporter.controller),
                now.as_nanosecond()
            )),
            ..Default::default()
        },
        series: None,
    }
}

impl Recorder {
    /// A recorder writing as `reporter`.
    pub fn new(client: kube::Client, reporter: Reporter) -> Recorder {
        Recorder {
            client,
            reporter,
            recent: Default::default(),
        }
    }

    /// Write `ev` about `regarding` (in its namespace, else `default`).
    pub async fn publish(&self, ev: &Event, regarding: &ObjectReference) -> kube::Result<()> {
        let now = Timestamp::now();
        let key = series_key(ev, regarding);
        let mut recent = self.recent.lock().await;
        recent.retain(|_, e| {
            e.last_timestamp
                .as_ref()
                .is_some_and(|t| now.duration_since(t.0).unsigned_abs() < SERIES_WINDOW)
        });
        let event = build(&self.reporter, ev, regarding, now, recent.get(&key));
        let api: Api<K8sEvent> = Api::namespaced(
            self.client.clone(),
            regarding.namespace.as_deref().unwrap_or("default"),
        );
        let name = event.metadata.name.clone().unwrap_or_default();
        if event.count.unwrap_or(1) > 1 {
            let counted = serde_json::json!({
                "count": event.count,
                "lastTimestamp": event.last_timestamp,
                "message": event.message,
            });
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&counted))
                .await?;
        } else {
            api.create(&PostParams::default(), &event).await?;
        }
        recent.insert(key, event);
        Ok(())
    }
}

/// The queue: started on first use (it needs a Tokio runtime).
pub struct EventQueue {
    recorder: Recorder,
    metrics: Arc<Metrics>,
    fence: Arc<Fence>,
    writers: OnceLock<Vec<mpsc::Sender<Item>>>,
    pending: Arc<AtomicUsize>,
    idle: Arc<Notify>,
}

impl EventQueue {
    /// A queue writing with `recorder` while `fence` allows, counting in `metrics`.
    pub fn new(recorder: Recorder, metrics: Arc<Metrics>, fence: Arc<Fence>) -> Self {
        EventQueue {
            recorder,
            metrics,
            fence,
            writers: OnceLock::new(),
            pending: Arc::new(AtomicUsize::new(0)),
            idle: Arc::new(Notify::new()),
        }
    }

    /// Queue `ev` about `regarding`; returns at once. A full queue drops the Event, counted
    /// and logged.
    pub fn push(&self, ev: Event, regarding: ObjectReference) {
        let writers = self.writers.get_or_init(|| self.start());
        let slot = writer_for(&regarding, writers.len());
        self.pending.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = writers[slot].try_send((ev, regarding)) {
            self.done();
            self.metrics.event(false);
            let (ev, _) = e.into_inner();
            tracing::warn!(reason = %ev.reason, "Event queue full: Event dropped");
        }
    }

    /// Wait until every queued Event is written or dropped, for at most `within` (a replica
    /// stopping gracefully calls this while it still holds the Lease).
    pub async fn flush(&self, within: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.idle.notified();
                if self.pending.load(Ordering::SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(within, wait).await.is_ok()
    }

    fn done(&self) {
        finish(&self.pending, &self.idle);
    }

    fn start(&self) -> Vec<mpsc::Sender<Item>> {
        (0..WRITERS)
            .map(|_| {
                let (tx, rx) = mpsc::channel(CAPACITY);
                tokio::spawn(write_all(
                    rx,
                    self.recorder.clone(),
                    self.metrics.clone(),
                    self.fence.clone(),
                    self.pending.clone(),
                    self.idle.clone(),
                ));
                tx
            })
            .collect()
    }
}

fn finish(pending: &AtomicUsize, idle: &Notify) {
    if pending.fetch_sub(1, Ordering::SeqCst) == 1 {
        idle.notify_waiters();
    }
}

/// The writer of Events about `regarding`: the same object always gets the same one.
fn writer_for(regarding: &ObjectReference, writers: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&regarding.namespace, &regarding.kind, &regarding.name).hash(&mut h);
    (h.finish() % writers.max(1) as u64) as usize
}

async fn write_all(
    mut rx: mpsc::Receiver<Item>,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    fence: Arc<Fence>,
    pending: Arc<AtomicUsize>,
    idle: Arc<Notify>,
) {
    while let Some((ev, regarding)) = rx.recv().await {
        let recorded = write_one(&recorder, &fence, &ev, &regarding).await;
        metrics.event(recorded);
        finish(&pending, &idle);
    }
}

/// Write one Event, trying once more after a pause; never without the Lease.
async fn write_one(
    recorder: &Recorder,
    fence: &Fence,
    ev: &Event,
    regarding: &ObjectReference,
) -> bool {
    let mut last = None;
    for attempt in 0..2 {
        if attempt > 0 {
            tokio::time::sleep(RETRY_AFTER).await;
        }
        if !fence.allows() {
            tracing::debug!(reason = %ev.reason, "Event not written: this replica no longer leads");
            return false;
        }
        match recorder.publish(ev, regarding).await {
            Ok(()) => return true,
            Err(e) => last = Some(e),
        }
    }
    if let Some(e) = last {
        tracing::warn!(error = %e, reason = %ev.reason, "could not record Event (dropped after a retry)");
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_carries_the_times_kubectl_sorts_by_and_a_repeat_joins_its_series() {
        let reporter = Reporter {
            controller: "graygate".into(),
            instance: Some("a".into()),
        };
        let ev = Event {
            type_: EventType::Warning,
            reason: "Paused".into(),
            note: Some("paused: x".into()),
            action: "PausedBatch1".into(),
            secondary: None,
        };
        let r = reference("shop", "web-v2");
        let t0 = Timestamp::from_second(1_800_000_000).unwrap();
        let first = build(&reporter, &ev, &r, t0, None);
        assert_eq!(first.first_timestamp, Some(Time(t0)));
        assert_eq!(first.last_timestamp, Some(Time(t0)));
        assert_eq!(first.count, Some(1));
        assert_eq!(first.event_time, Some(MicroTime(t0)));
        assert_eq!(first.type_.as_deref(), Some("Warning"));
        assert_eq!(first.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(first.reporting_component.as_deref(), Some("graygate"));
        assert_eq!(first.reporting_instance.as_deref(), Some("a"));
        assert_eq!(first.action.as_deref(), Some("PausedBatch1"));
        let t1 = t0 + jiff::SignedDuration::from_secs(60);
        let again = build(&reporter, &ev, &r, t1, Some(&first));
        assert_eq!(again.metadata.name, first.metadata.name, "the same object");
        assert_eq!(again.first_timestamp, Some(Time(t0)));
        assert_eq!(again.last_timestamp, Some(Time(t1)));
        assert_eq!(again.count, Some(2));
        let third = build(&reporter, &ev, &r, t1, Some(&again));
        assert_eq!(third.count, Some(3));
        // Long after: a new Event.
        let t2 = t1 + jiff::SignedDuration::from_secs(3600);
        let later = build(&reporter, &ev, &r, t2, Some(&third));
        assert_ne!(later.metadata.name, first.metadata.name);
        assert_eq!(later.count, Some(1));
        assert_ne!(
            series_key(&ev, &r),
            series_key(&ev, &reference("shop", "other"))
        );
        // Two holds of one workload, each related to its own change: two Events.
        let held = |change: &str| Event {
            type_: EventType::Normal,
            reason: "ChangeHeld".into(),
            note: None,
            action: "ChangeHeld".into(),
            secondary: Some(reference("shop", change)),
        };
        assert_ne!(
            series_key(&held("web-a"), &r),
            series_key(&held("web-b"), &r)
        );
        assert_eq!(
            series_key(&held("web-a"), &r),
            series_key(&held("web-a"), &r)
        );
    }

    fn reference(ns: &str, name: &str) -> ObjectReference {
        ObjectReference {
            namespace: Some(ns.into()),
            kind: Some("ChangeRequest".into()),
            name: Some(name.into()),
            ..Default::default()
        }
    }

    #[test]
    fn one_object_always_goes_to_the_same_writer_and_objects_spread() {
        let a = writer_for(&reference("n", "a"), WRITERS);
        for _ in 0..10 {
            assert_eq!(writer_for(&reference("n", "a"), WRITERS), a);
        }
        let used: std::collections::HashSet<usize> = (0..64)
            .map(|i| writer_for(&reference("n", &format!("c{i}")), WRITERS))
            .collect();
        assert_eq!(used.len(), WRITERS, "64 objects use every writer");
        assert_eq!(writer_for(&reference("n", "a"), 1), 0);
    }
}
