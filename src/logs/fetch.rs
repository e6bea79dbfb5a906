//! Reading the groups' logs through the Kubernetes API (`pods/log`), bounded per pod.

use super::detect::LogGroup;
use crate::api::LogAnalysisSpec;
use crate::rollout::Groups;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::LogParams;

/// Default bytes read per pod and request.
pub const DEFAULT_MAX_BYTES: i64 = 1024 * 1024;
/// Default pods read per group.
pub const DEFAULT_MAX_PODS: u32 = 5;

/// The change group, the control group (same window) and the control pods before the change.
pub struct GroupLogs {
    /// Change pods, since the window start.
    pub change: LogGroup,
    /// A sample of control pods, since the window start.
    pub control: LogGroup,
    /// The same control pods, in the hour before the change started.
    pub before: LogGroup,
}

async fn read(
    api: &Api<Pod>,
    pod: &str,
    spec: &LogAnalysisSpec,
    since: Timestamp,
    timestamps: bool,
) -> Result<String, String> {
    let lp = LogParams {
        container: spec.container.clone(),
        since_time: Some(since),
        limit_bytes: Some(spec.max_bytes_per_pod.unwrap_or(DEFAULT_MAX_BYTES)),
        timestamps,
        ..Default::default()
    };
    api.logs(pod, &lp)
        .await
        .map_err(|e| format!("reading logs of pod {pod}: {e}"))
}

/// Read the logs of the groups for the window starting at `from`.
pub async fn fetch(
    client: &kube::Client,
    ns: &str,
    groups: &Groups,
    spec: &LogAnalysisSpec,
    from: Timestamp,
    change_started: Timestamp,
) -> Result<GroupLogs, String> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let max_pods = spec.max_pods.unwrap_or(DEFAULT_MAX_PODS) as usize;
    let mut out = GroupLogs {
        change: LogGroup::default(),
        control: LogGroup::default(),
        before: LogGroup::default(),
    };
    let now = Timestamp::now();
    // Seconds of a pod's life between `start` and `end` (from when it became ready, if later):
    // the opportunity its log had to show a template.
    let from_ready = |p: &crate::rollout::GroupPod, start: Timestamp| {
        p.ready_since.map_or(start, |r| r.max(start))
    };
    let watched = |p: &crate::rollout::GroupPod, start: Timestamp, end: Timestamp| {
        let start = from_ready(p, start);
        (end.as_millisecond() - start.as_millisecond()).max(0) as f64 / 1000.0
    };
    for p in groups.change.iter().take(max_pods) {
        let text = read(&api, &p.name, spec, from, false).await?;
        out.change
            .pods
            .insert(p.name.clone(), text.lines().map(String::from).collect());
        out.change
            .seconds
            .insert(p.name.clone(), watched(p, from, now));
    }
    let before_start = change_started - jiff::SignedDuration::from_hours(1);
    for p in groups.control.iter().take(max_pods) {
        let text = read(&api, &p.name, spec, from, false).await?;
        out.control
            .pods
            .insert(p.name.clone(), text.lines().map(String::from).collect());
        out.control
            .seconds
            .insert(p.name.clone(), watched(p, from, now));
        out.before
            .seconds
            .insert(p.name.clone(), watched(p, before_start, change_started));
        // With timestamps, so lines after the change started can be told apart and dropped,
        // and each line's time kept (seconds since the pod's watched time began).
        let origin = from_ready(p, before_start);
        let text = read(&api, &p.name, spec, before_start, true).await?;
        let (at, before): (Vec<f64>, Vec<String>) = text
            .lines()
            .filter_map(|l| {
                let (ts, rest) = l.split_once(' ')?;
                let t: Timestamp = ts.parse().ok()?;
                let since = (t.as_millisecond() - origin.as_millisecond()) as f64 / 1000.0;
                (t < change_started).then(|| (since, rest.to_string()))
            })
            .unzip();
        out.before.at.insert(p.name.clone(), at);
        out.before.pods.insert(p.name.clone(), before);
    }
    Ok(out)
}
