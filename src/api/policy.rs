//! The `ChangePolicy` custom resource: guarded workloads. Every pod-template change to a
//! workload it selects is held by graygate's admission webhook and rolled out as a generated
//! ChangeRequest, whoever made it.

use super::{
    AnalysisSpec, Baseline, BatchSpec, ChangeWindow, DeletionPolicy, Duration, OnAnalysisError,
    OnAnomaly, TargetKind, TrafficSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Label graygate puts on every workload a policy guards (value: the policy's name). The
/// admission webhook only sees workloads carrying it, so nothing else depends on graygate.
pub const LABEL_GUARDED_BY: &str = "graygate.io/guarded-by";
/// Label on generated ChangeRequests: the guarded workload's name.
pub const LABEL_WORKLOAD: &str = "graygate.io/workload";
/// Annotation the webhook sets when it holds a new template: the template's hash.
pub const ANN_HELD: &str = "graygate.io/held-template";
/// Annotation on a StatefulSet the webhook holds: its `rollingUpdate.partition` before the hold.
pub const ANN_PARTITION: &str = "graygate.io/partition";
/// Annotation graygate sets when a held template failed: `<hash> (<ChangeRequest>)`.
pub const ANN_FAILED: &str = "graygate.io/failed-template";
/// Annotation graygate keeps on a held workload: the hash of the template its pods run, so the
/// webhook can tell a revert (released at once) from a new change.
pub const ANN_RUNNING: &str = "graygate.io/running-template";
/// Annotation graygate keeps on a guarded workload: the hashes of its templates that failed (the
/// last 10, comma-separated), kept across releases, so the webhook can say that applying one of
/// them again rolls nothing.
pub const ANN_FAILED_TEMPLATES: &str = "graygate.io/failed-templates";
/// How many failed template hashes [`ANN_FAILED_TEMPLATES`] keeps.
pub const MAX_FAILED_TEMPLATES: usize = 10;
/// Whether the failed-templates list (the value of [`ANN_FAILED_TEMPLATES`]) names `hash`.
pub fn failed_before(list: Option<&str>, hash: &str) -> bool {
    list.is_some_and(|l| l.split(',').any(|h| h.trim() == hash))
}

/// The failed-templates list with `hash` last, at most [`MAX_FAILED_TEMPLATES`].
pub fn with_failed(list: Option<&String>, hash: &str) -> String {
    let mut hashes: Vec<&str> = list
        .map(|l| {
            l.split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty() && *h != hash)
                .collect()
        })
        .unwrap_or_default();
    hashes.push(hash);
    let excess = hashes.len().saturating_sub(MAX_FAILED_TEMPLATES);
    hashes[excess..].join(",")
}

/// How the `graygate.io/abort` value graygate writes when a newer template replaces a change
/// begins: such a change ends `Superseded`, not `RolledBack`.
pub const SUPERSEDED_BY: &str = "superseded by";

/// Whether a `graygate.io/abort` value is the one graygate writes for a supersede.
pub fn is_supersede(abort: &str) -> bool {
    abort.trim().starts_with(SUPERSEDED_BY)
}
/// Annotation naming the ChangeRequest rolling out the held template.
pub const ANN_CHANGE: &str = "graygate.io/change";
/// Finalizer that releases a deleted policy's workloads.
pub const POLICY_FINALIZER: &str = "graygate.io/release";
/// The field manager of graygate's writes to guarded workloads and policies.
pub const MANAGER_GUARD: &str = "graygate-guard";

/// Guards workloads of its namespace: every change to their pod template goes out in gray batches.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "graygate.io",
    version = "v1alpha1",
    kind = "ChangePolicy",
    namespaced,
    status = "ChangePolicyStatus",
    shortname = "chp",
    category = "graygate",
    doc = "Guards Deployments and StatefulSets: any change to their pod template, by anyone, is held and rolled out as a ChangeRequest.",
    printcolumn = r#"{"name":"Guarded","type":"integer","jsonPath":".status.guarded"}"#,
    printcolumn = r#"{"name":"Held","type":"integer","jsonPath":".status.held"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ChangePolicySpec {
    /// The workloads of this namespace the policy guards.
    pub workloads: WorkloadSelector,
    /// The settings every intercepted change gets.
    pub change: ChangeSettings,
    /// A newer template arriving while a change is in flight: `supersede` (default: the running
    /// change ends `Superseded`, its canary removed, then the newer one starts) or `queue` (the
    /// running change finishes its verdict first).
    #[serde(default)]
    pub on_newer_change: OnNewerChange,
}

/// Which workloads a policy guards: by name, by label, or both (a workload matching either).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    /// Kinds guarded (default: both Deployment and StatefulSet).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<TargetKind>,
    /// Workload names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Labels a workload must carry (all of them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

/// 1–63 bytes of `allowed`, starting and ending with a letter or digit.
fn is_segment(b: &[u8], allowed: impl Fn(u8) -> bool) -> bool {
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| allowed(*c))
}

/// Whether `s` is a Kubernetes name segment (a label key's name, a label value): letters,
/// digits, `-`, `_` and `.`.
fn is_name_segment(s: &str) -> bool {
    is_segment(s.as_bytes(), |c| {
        c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')
    })
}

/// Whether `s` is a DNS subdomain (a label key's prefix, a workload name): lowercase labels
/// joined by dots, at most 253 characters.
pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|part| {
            is_segment(part.as_bytes(), |c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'
            })
        })
}

impl WorkloadSelector {
    /// Check the selector as the API server checks a label selector; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.names.is_empty() && self.match_labels.is_empty() {
            return Err(
                "spec.workloads: name the workloads (names) or the labels they carry (matchLabels); a selector with neither guards nothing".into(),
            );
        }
        for (k, v) in &self.match_labels {
            let (prefix, name) = match k.split_once('/') {
                Some((p, n)) => (Some(p), n),
                None => (None, k.as_str()),
            };
            if !is_name_segment(name) || prefix.is_some_and(|p| !is_dns_subdomain(p)) {
                return Err(format!(
                    "spec.workloads.matchLabels: {k:?} is not a valid label key (an optional DNS prefix and '/', then 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)"
                ));
            }
            if !v.is_empty() && !is_name_segment(v) {
                return Err(format!(
                    "spec.workloads.matchLabels.{k}: {v:?} is not a valid label value (at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)"
                ));
            }
        }
        for (i, n) in self.names.iter().enumerate() {
            if !is_dns_subdomain(n) {
                return Err(format!(
                    "spec.workloads.names[{i}]: {n:?} is not a valid workload name (lowercase letters, digits, '-' and '.')"
                ));
            }
        }
        Ok(())
    }

    /// Does a workload of this kind, name and labels fall under the selector?
    pub fn selects(&self, kind: TargetKind, name: &str, labels: &BTreeMap<String, String>) -> bool {
        if !self.kinds.is_empty() && !self.kinds.contains(&kind) {
            return false;
        }
        let by_name = self.names.iter().any(|n| n == name);
        let by_label = !self.match_labels.is_empty()
            && self
                .match_labels
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v));
        by_name || by_label
    }
}

/// The ChangeRequest settings of every change a policy generates (see the ChangeRequest's spec).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChangeSettings {
    /// The batches, in order; the last one reaches 100%.
    #[schemars(length(min = 1))]
    pub batches: Vec<BatchSpec>,
    /// `rollback` (default) or `pause`.
    #[serde(default)]
    pub on_anomaly: OnAnomaly,
    /// `pause` (default) or `continue`.
    #[serde(default)]
    pub on_analysis_error: OnAnalysisError,
    /// How long a batch may take to be ready (default 10m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline: Option<Duration>,
    /// Times when a batch may start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<ChangeWindow>,
    /// What deleting an active generated ChangeRequest does: `rollback` (default) or `keep`.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// `control` (default) or `fresh`: see the ChangeRequest's `baseline`.
    #[serde(default, skip_serializing_if = "Baseline::is_control")]
    pub baseline: Baseline,
    /// Metric and log analysis between batches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisSpec>,
    /// Route a share of the requests to each change's canary through a Gateway API `HTTPRoute`,
    /// as a ChangeRequest's `traffic` does. `$(workload)` in the route's and the Services' names
    /// stands for the guarded workload's name (e.g. `canaryService: $(workload)-canary`). Needs
    /// `workloads.kinds: [Deployment]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<TrafficSpec>,
}

/// What `$(workload)` stands for in a policy's `change.traffic`.
pub const WORKLOAD_VAR: &str = "$(workload)";

impl TrafficSpec {
    /// The route and Services of `workload`'s changes: `$(workload)` replaced by its name.
    pub fn for_workload(&self, workload: &str) -> TrafficSpec {
        let mut t = self.clone();
        let g = &mut t.gateway_api;
        for name in [
            &mut g.http_route,
            &mut g.stable_service,
            &mut g.canary_service,
        ] {
            *name = name.replace(WORKLOAD_VAR, workload);
        }
        if let Some(rule) = &mut g.rule {
            *rule = rule.replace(WORKLOAD_VAR, workload);
        }
        t
    }
}

/// What a newer template does to a change in flight.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OnNewerChange {
    /// End the running change as `Superseded` (its canary goes first), then start the newer one.
    #[default]
    Supersede,
    /// Let the running change reach its verdict; the newer one waits its turn.
    Queue,
}

/// What graygate sees of its guarded workloads.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChangePolicyStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// How many workloads the policy guards.
    #[serde(default)]
    pub guarded: u32,
    /// How many of them hold a template that is not released yet.
    #[serde(default)]
    pub held: u32,
    /// One entry per guarded workload.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<GuardedWorkload>,
    /// Ready: the policy is valid and its workloads are labelled for the webhook.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// One guarded workload.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GuardedWorkload {
    /// `Deployment` or `StatefulSet`.
    pub kind: String,
    /// The workload's name.
    pub name: String,
    /// `Released` (runs what its spec holds), `Held` (a change is in flight or waiting),
    /// `Failed` (its template failed and stays held), `Unguarded` (a change went past the webhook),
    /// `Overlap` (another policy that selected it first guards it).
    pub state: String,
    /// Hash of the pod template the workload's spec holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// The ChangeRequest for that template, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<String>,
    /// One sentence on the workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When graygate last saw the template change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_selector_with_an_invalid_label_key_or_value_is_refused_naming_the_field() {
        let sel = |k: &str, v: &str| WorkloadSelector {
            match_labels: [(k.to_string(), v.to_string())].into(),
            ..Default::default()
        };
        assert!(sel("app", "web").validate().is_ok());
        assert!(
            sel("app.kubernetes.io/name", "web-1.2_x")
                .validate()
                .is_ok()
        );
        assert!(sel("tier", "").validate().is_ok());
        let e = sel("bad key!", "x").validate().unwrap_err();
        assert!(
            e.starts_with("spec.workloads.matchLabels: \"bad key!\""),
            "{e}"
        );
        assert!(sel("Example.com/app", "x").validate().is_err());
        assert!(sel(&"a".repeat(64), "x").validate().is_err());
        let e = sel("app", "web server").validate().unwrap_err();
        assert!(e.starts_with("spec.workloads.matchLabels.app:"), "{e}");
        let names = WorkloadSelector {
            names: vec!["web".into(), "Web_1".into()],
            ..Default::default()
        };
        assert!(
            names
                .validate()
                .unwrap_err()
                .starts_with("spec.workloads.names[1]:")
        );
        // Kinds alone select nothing: refused, rather than a policy that silently guards nothing.
        let kinds_only = WorkloadSelector {
            kinds: vec![TargetKind::Deployment],
            ..Default::default()
        };
        assert!(
            kinds_only
                .validate()
                .unwrap_err()
                .starts_with("spec.workloads: name the workloads")
        );
    }
}
