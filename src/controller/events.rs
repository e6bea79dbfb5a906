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

use super::lease::Fence;
use super::metrics::Metrics;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, Recorder};
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
