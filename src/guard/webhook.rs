//! The mutating admission webhook that holds guarded workloads.
//!
//! The API server calls it for UPDATEs of Deployments and StatefulSets carrying the
//! `graygate.io/guarded-by` label (the webhook configuration's object selector), so workloads
//! no policy guards never depend on graygate. A change of the pod template made by anyone but
//! graygate is let through *held*: a Deployment is paused, a StatefulSet's partition is raised
//! above every ordinal, so Kubernetes replaces no pod; graygate then rolls the held template
//! out as a ChangeRequest. Scaling, metadata and status writes pass untouched.
//!
//! It is also called for CREATEs of pods labelled `graygate.io/pinned`: their references to a
//! ConfigMap or Secret are pointed at the copies their template's pins name (see
//! [`super::pin`]).

use crate::api::{
    ANN_FAILED, ANN_FAILED_TEMPLATES, ANN_HELD, ANN_PARTITION, ANN_RUNNING, LABEL_GUARDED_BY,
};
use crate::rollout::template_hash;
use base64::Engine;
use serde_json::{Value, json};

pub use crate::workload::HOLD_PARTITION;

/// What the webhook answers for one admission request.
#[derive(Debug, Default, PartialEq)]
pub struct Verdict {
    /// JSON Patch operations to apply to the object.
    pub patch: Vec<Value>,
    /// Warnings shown to the client (kubectl prints them).
    pub warnings: Vec<String>,
    /// A new template is held (not a revert to the running one, not a held workload's other
    /// edit): what `graygate_webhook_held_total` counts.
    pub holds_change: bool,
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn annotation(obj: &Value, key: &str) -> Option<String> {
    obj.pointer(&format!("/metadata/annotations/{}", escape(key)))
        .and_then(Value::as_str)
        .map(String::from)
}

fn set_annotation(obj: &Value, key: &str, value: &str, ops: &mut Vec<Value>) {
    if obj.pointer("/metadata/annotations").is_none() {
        ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": {}}));
    }
    ops.push(json!({"op": "add", "path": format!("/metadata/annotations/{}", escape(key)), "value": value}));
}

/// The pod template as graygate hashes it: through the typed objects, as the controller reads them.
fn template(obj: &Value) -> Option<Value> {
    normalized(obj.pointer("/spec/template")?.clone())
}

fn normalized(t: Value) -> Option<Value> {
    let typed: k8s_openapi::api::core::v1::PodTemplateSpec = serde_json::from_value(t).ok()?;
    serde_json::to_value(typed).ok()
}

/// The hash the webhook gives a pod template (read from any source: a ReplicaSet, a
/// ControllerRevision).
pub fn normalized_hash(t: &Value) -> Option<String> {
    let mut t = normalized(t.clone())?;
    if let Some(Value::Object(l)) = t.pointer_mut("/metadata/labels") {
        l.remove("pod-template-hash");
    }
    Some(template_hash(&t))
}

/// Decide one request. `trusted` are the user names whose writes pass untouched (graygate's own).
pub fn review(request: &Value, trusted: &[String]) -> Verdict {
    let mut v = Verdict::default();
    if request.pointer("/kind/kind").and_then(Value::as_str) == Some("Pod") {
        // A new pod of a pinned template reads the copies its pins name.
        if request.get("operation").and_then(Value::as_str) == Some("CREATE")
            && let Some(pod) = request.get("object")
        {
            v.patch = super::pin::pod_patch(pod);
        }
        return v;
    }
    if request.get("operation").and_then(Value::as_str) != Some("UPDATE") {
        return v;
    }
    let user = request
        .pointer("/userInfo/username")
        .and_then(Value::as_str)
        .unwrap_or("");
    if trusted.iter().any(|t| t == user) {
        return v;
    }
    let (Some(new), Some(old)) = (request.get("object"), request.get("oldObject")) else {
        return v;
    };
    let guarded = new
        .pointer(&format!("/metadata/labels/{}", escape(LABEL_GUARDED_BY)))
        .is_some();
    if !guarded {
        return v;
    }
    let kind = request
        .pointer("/kind/kind")
        .and_then(Value::as_str)
        .unwrap_or("");
    let (Some(t_new), Some(t_old)) = (template(new), template(old)) else {
        return v;
    };
    let h_new = template_hash(&t_new);
    let changed = h_new != template_hash(&t_old);
    let was_held = annotation(old, ANN_HELD);
    let policy = new
        .pointer(&format!("/metadata/labels/{}", escape(LABEL_GUARDED_BY)))
        .and_then(Value::as_str)
        .unwrap_or("");
    let name = new
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !changed && was_held.is_none() {
        return v;
    }
    // Held: a new template, or an edit of a workload already held (a `kubectl rollout resume`,
    // a lowered partition) that would let the held template through.
    let held_hash = if changed {
        h_new.clone()
    } else {
        was_held.clone().unwrap_or_default()
    };
    if annotation(new, ANN_HELD).as_deref() != Some(held_hash.as_str()) {
        set_annotation(new, ANN_HELD, &held_hash, &mut v.patch);
    }
    match kind {
        "Deployment" => {
            if new.pointer("/spec/paused").and_then(Value::as_bool) != Some(true) {
                v.patch
                    .push(json!({"op": "add", "path": "/spec/paused", "value": true}));
            }
        }
        "StatefulSet" => {
            let strategy = new
                .pointer("/spec/updateStrategy")
                .cloned()
                .unwrap_or_else(|| json!({"type": "RollingUpdate"}));
            if strategy.get("type").and_then(Value::as_str) == Some("OnDelete") {
                // Kubernetes replaces no pod of an OnDelete StatefulSet by itself: nothing to hold.
                return Verdict::default();
            }
            let partition = strategy
                .pointer("/rollingUpdate/partition")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if was_held.is_none() && annotation(new, ANN_PARTITION).is_none() {
                let before = old
                    .pointer("/spec/updateStrategy/rollingUpdate/partition")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                set_annotation(new, ANN_PARTITION, &before.to_string(), &mut v.patch);
            }
            if partition != HOLD_PARTITION {
                let mut ru = strategy
                    .get("rollingUpdate")
                    .cloned()
                    .unwrap_or_else(|| json!({}));
                ru["partition"] = json!(HOLD_PARTITION);
                v.patch.push(json!({"op": "add", "path": "/spec/updateStrategy", "value": {"type": "RollingUpdate", "rollingUpdate": ru}}));
            }
        }
        _ => return Verdict::default(),
    }
    let failed_before =
        crate::api::failed_before(annotation(old, ANN_FAILED_TEMPLATES).as_deref(), &h_new);
    let revert = was_held.is_some() && annotation(old, ANN_RUNNING).as_deref() == Some(&h_new);
    v.holds_change = changed && !revert;
    if !v.patch.is_empty() {
        v.warnings.push(if changed && revert {
            format!(
                "{kind}/{name} goes back to the pod template its pods run ({h_new}): graygate (policy {policy}) releases it without a change"
            )
        } else if changed && failed_before {
            format!(
                "pod template {h_new} of {kind}/{name} failed before: graygate (policy {policy}) holds it and rolls nothing; the old pods keep serving until a fixed template is applied (kubectl get changerequests -l graygate.io/workload={name})"
            )
        } else if changed {
            format!(
                "graygate holds this change to {kind}/{name}: policy {policy} rolls pod template {h_new} out in gray batches (kubectl get changerequests -l graygate.io/workload={name})"
            )
        } else if let Some(failed) = annotation(old, ANN_FAILED) {
            // Its change failed and will never be released: say what does lift the hold.
            let running = annotation(old, ANN_RUNNING).unwrap_or_default();
            let selector = new
                .pointer("/spec/selector/matchLabels")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            format!(
                "{kind}/{name} holds pod template {failed}, which failed: the hold stays (graygate, policy {policy}) until a fixed template is applied, or the template its pods run ({running}) — e.g. kubectl set image with the image its pods run (kubectl get replicasets -l {selector} -o wide shows it); that is released at once, and kubectl rollout restart works again"
            )
        } else {
            format!(
                "{kind}/{name} is held by graygate (policy {policy}) until its change {held_hash} is released; the hold stays"
            )
        });
    }
    v
}

/// The AdmissionReview answer for `review` (the whole request document).
pub fn respond(review_doc: &Value, trusted: &[String]) -> Value {
    respond_counted(review_doc, trusted).0
}

/// [`respond`], and whether the answer holds a new template.
pub fn respond_counted(review_doc: &Value, trusted: &[String]) -> (Value, bool) {
    let request = review_doc.get("request").cloned().unwrap_or(Value::Null);
    let uid = request.get("uid").cloned().unwrap_or(json!(""));
    let verdict = review(&request, trusted);
    let holds = verdict.holds_change && !verdict.patch.is_empty();
    let mut response = json!({"uid": uid, "allowed": true});
    if !verdict.patch.is_empty() {
        let patch = serde_json::to_vec(&verdict.patch).unwrap_or_default();
        response["patchType"] = json!("JSONPatch");
        response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(patch));
    }
    if !verdict.warnings.is_empty() {
        response["warnings"] = json!(verdict.warnings);
    }
    (
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": response,
        }),
        holds,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deploy(image: &str, paused: Option<bool>, ann: Value) -> Value {
        json!({
            "metadata": {"name": "web", "labels": {LABEL_GUARDED_BY: "p"}, "annotations": ann},
            "spec": {"replicas": 3, "paused": paused, "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": image}]}
            }}
        })
    }

    fn req(kind: &str, old: Value, new: Value, user: &str) -> Value {
        json!({"uid": "1", "operation": "UPDATE", "kind": {"kind": kind},
               "userInfo": {"username": user}, "object": new, "oldObject": old})
    }

    #[test]
    fn a_revert_and_a_failed_template_are_told_apart_from_a_new_change() {
        let hash = |image: &str| {
            normalized_hash(&deploy(image, None, json!({}))["spec"]["template"]).unwrap()
        };
        // Held on app:2 while the pods run app:1; the failed list remembers app:3.
        let held = deploy(
            "app:2",
            Some(true),
            json!({
                ANN_HELD: hash("app:2"),
                ANN_RUNNING: hash("app:1"),
                ANN_FAILED_TEMPLATES: format!("{},{}", hash("app:9"), hash("app:3")),
            }),
        );
        let warning = |image: &str| {
            let v = review(
                &req(
                    "Deployment",
                    held.clone(),
                    deploy(image, Some(true), held["metadata"]["annotations"].clone()),
                    "alice",
                ),
                &[],
            );
            v.warnings.join("; ")
        };
        let back = warning("app:1");
        assert!(
            back.contains("goes back to the pod template its pods run")
                && back.contains("without a change")
                && !back.contains("gray batches"),
            "{back}"
        );
        let again = warning("app:3");
        assert!(
            again.contains("failed before") && again.contains("rolls nothing"),
            "{again}"
        );
        let new = warning("app:4");
        assert!(new.contains("in gray batches"), "{new}");
        // graygate_webhook_held_total counts held templates, not reverts released at once.
        let counted = |image: &str| {
            let doc = json!({"request": req(
                "Deployment",
                held.clone(),
                deploy(image, Some(true), held["metadata"]["annotations"].clone()),
                "alice",
            )});
            respond_counted(&doc, &[]).1
        };
        assert!(!counted("app:1"), "a revert");
        // A resume of a held workload whose change failed says what lifts the hold.
        let mut failed = held.clone();
        failed["metadata"]["annotations"][ANN_FAILED] = json!(format!("{} (web-x)", hash("app:2")));
        let mut resumed = failed.clone();
        resumed["spec"]["paused"] = json!(false);
        let v = review(&req("Deployment", failed, resumed, "alice"), &[]);
        let said = v.warnings.join("; ");
        assert!(
            said.contains("which failed")
                && said.contains("the template its pods run")
                && said.contains("kubectl set image")
                && !said.contains("until its change"),
            "{said}"
        );
        assert!(
            v.patch.iter().any(|o| o["path"] == "/spec/paused"),
            "still held"
        );
        assert!(counted("app:3") && counted("app:4"));
        // A ReplicaSet's template (with its pod-template-hash label) hashes as the Deployment's.
        let mut rs_template = deploy("app:1", None, json!({}))["spec"]["template"].clone();
        rs_template["metadata"]["labels"]["pod-template-hash"] = json!("5d4f8c");
        assert_eq!(normalized_hash(&rs_template), Some(hash("app:1")));
    }

    #[test]
    fn a_template_change_is_held_and_scaling_passes() {
        let old = deploy("app:1", None, json!({}));
        let new = deploy("app:2", None, json!({}));
        let v = review(&req("Deployment", old.clone(), new, "alice"), &[]);
        assert!(
            v.patch
                .iter()
                .any(|o| o["path"] == "/spec/paused" && o["value"] == true)
        );
        assert!(
            v.patch
                .iter()
                .any(|o| o["path"] == "/metadata/annotations/graygate.io~1held-template")
        );
        assert_eq!(v.warnings.len(), 1);
        let mut scaled = old.clone();
        scaled["spec"]["replicas"] = json!(9);
        assert_eq!(
            review(&req("Deployment", old.clone(), scaled, "alice"), &[]),
            Verdict::default()
        );
        // graygate's own writes and unguarded workloads pass.
        let new = deploy("app:2", None, json!({}));
        assert_eq!(
            review(
                &req(
                    "Deployment",
                    old.clone(),
                    new.clone(),
                    "system:serviceaccount:g:g"
                ),
                &["system:serviceaccount:g:g".into()]
            ),
            Verdict::default()
        );
        let mut unguarded = new;
        unguarded["metadata"]["labels"] = json!({});
        assert_eq!(
            review(&req("Deployment", old, unguarded, "alice"), &[]),
            Verdict::default()
        );
    }

    #[test]
    fn a_held_deployment_stays_held_on_resume() {
        let held = deploy("app:2", Some(true), json!({ANN_HELD: "abc"}));
        let resumed = deploy("app:2", Some(false), json!({ANN_HELD: "abc"}));
        let v = review(&req("Deployment", held, resumed, "bob"), &[]);
        assert_eq!(
            v.patch,
            vec![json!({"op": "add", "path": "/spec/paused", "value": true})]
        );
    }

    #[test]
    fn a_statefulset_is_held_by_its_partition() {
        let sts = |image: &str, partition: i64| {
            json!({
                "metadata": {"name": "db", "labels": {LABEL_GUARDED_BY: "p"}},
                "spec": {"replicas": 3, "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": partition}},
                         "template": {"spec": {"containers": [{"name": "db", "image": image}]}}}
            })
        };
        let v = review(
            &req("StatefulSet", sts("db:1", 1), sts("db:2", 1), "x"),
            &[],
        );
        let strategy = v
            .patch
            .iter()
            .find(|o| o["path"] == "/spec/updateStrategy")
            .unwrap();
        assert_eq!(
            strategy["value"]["rollingUpdate"]["partition"],
            HOLD_PARTITION
        );
        let before = v
            .patch
            .iter()
            .find(|o| o["path"] == "/metadata/annotations/graygate.io~1partition")
            .unwrap();
        assert_eq!(before["value"], "1");
    }

    #[test]
    fn the_response_is_an_admission_review_with_a_base64_patch() {
        let doc = json!({"request": req("Deployment", deploy("a:1", None, json!({})), deploy("a:2", None, json!({})), "u")});
        let r = respond(&doc, &[]);
        assert_eq!(r["response"]["uid"], "1");
        assert_eq!(r["response"]["allowed"], true);
        assert_eq!(r["response"]["patchType"], "JSONPatch");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(r["response"]["patch"].as_str().unwrap())
            .unwrap();
        let ops: Vec<Value> = serde_json::from_slice(&raw).unwrap();
        assert!(!ops.is_empty());
    }

    #[test]
    fn a_new_pinned_pod_reads_its_copies_and_nothing_else_of_a_pod_is_touched() {
        let pod = json!({
            "metadata": {"name": "web-1", "labels": {crate::guard::pin::LABEL_PINNED: "true"},
                         "annotations": {crate::guard::pin::ANN_PINS: r#"{"ConfigMap/cfg":"cfg-gg-1"}"#}},
            "spec": {"volumes": [{"name": "c", "configMap": {"name": "cfg"}}],
                     "containers": [{"name": "app", "image": "a:1"}]}
        });
        let create = json!({"uid": "1", "operation": "CREATE", "kind": {"kind": "Pod"},
                            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                            "object": pod});
        let v = review(&create, &[]);
        assert_eq!(
            v.patch,
            [
                json!({"op": "replace", "path": "/spec/volumes", "value": [{"name": "c", "configMap": {"name": "cfg-gg-1"}}]}),
                json!({"op": "add", "path": "/metadata/annotations/graygate.io~1config-pinned", "value": "true"}),
            ]
        );
        assert!(!v.holds_change && v.warnings.is_empty());
        // Only at creation: a pod's spec cannot change later anyway.
        let mut update = create.clone();
        update["operation"] = json!("UPDATE");
        update["oldObject"] = update["object"].clone();
        assert_eq!(review(&update, &[]), Verdict::default());
    }
}
