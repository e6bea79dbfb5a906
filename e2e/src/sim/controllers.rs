//! The simulated kube-controller-manager and kubelet: Deployments, ReplicaSets, StatefulSets
//! and pod lifecycles, reconciled against the store every few milliseconds.

use super::apps::Apps;
use super::store::{Propagation, ResourceType, Store, name_suffix, now_rfc3339};
use graygate::util::short_hash;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Pod timing.
#[derive(Clone, Copy, Debug)]
pub struct PodTiming {
    /// From creation to Running.
    pub start: Duration,
    /// From Running to Ready.
    pub ready: Duration,
    /// From deletion to gone.
    pub terminate: Duration,
}

impl Default for PodTiming {
    fn default() -> Self {
        PodTiming {
            start: Duration::from_millis(300),
            ready: Duration::from_millis(700),
            terminate: Duration::from_millis(300),
        }
    }
}

/// Controller state between ticks.
pub struct Controllers {
    store: Arc<Store>,
    apps: Arc<Apps>,
    timing: PodTiming,
    seen: HashMap<String, Instant>,
    terminating: HashMap<String, Instant>,
    counter: u64,
    pods: ResourceType,
    rs: ResourceType,
    deploy: ResourceType,
    sts: ResourceType,
    revs: ResourceType,
}

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}
fn i(v: &Value, p: &str) -> i64 {
    v.pointer(p).and_then(Value::as_i64).unwrap_or(0)
}
fn owned_by(obj: &Value, uid: &str) -> bool {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|r| {
            r.iter()
                .any(|o| o.get("uid").and_then(Value::as_str) == Some(uid))
        })
}
fn terminating(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp").is_some()
}
fn pod_ready(p: &Value) -> bool {
    !terminating(p)
        && p.pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| s(c, "/type") == "Ready" && s(c, "/status") == "True")
            })
}
fn owner_ref(owner: &Value) -> Value {
    json!({
        "apiVersion": s(owner, "/apiVersion"), "kind": s(owner, "/kind"), "name": s(owner, "/metadata/name"),
        "uid": s(owner, "/metadata/uid"), "controller": true, "blockOwnerDeletion": true
    })
}
/// Resolve an int-or-percent against `total`.
pub fn int_or_percent(v: Option<&Value>, total: i64, round_up: bool, default_percent: i64) -> i64 {
    let pct = |p: i64| {
        let x = p * total;
        if round_up { (x + 99) / 100 } else { x / 100 }
    };
    match v {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        Some(Value::String(t)) => t
            .strip_suffix('%')
            .and_then(|p| p.parse().ok())
            .map(pct)
            .or_else(|| t.parse().ok())
            .unwrap_or(0),
        _ => pct(default_percent),
    }
}

impl Controllers {
    /// Controllers over `store`, starting apps in `apps`.
    pub fn new(store: Arc<Store>, apps: Arc<Apps>, timing: PodTiming) -> Self {
        let find = |kind: &str| {
            store
                .resource_by_kind(kind)
                .unwrap_or_else(|| ResourceType::builtin("", "v1", "unknown", kind, true))
        };
        Controllers {
            pods: find("Pod"),
            rs: find("ReplicaSet"),
            deploy: find("Deployment"),
            sts: find("StatefulSet"),
            revs: find("ControllerRevision"),
            store,
            apps,
            timing,
            seen: HashMap::new(),
            terminating: HashMap::new(),
            counter: 0,
        }
    }

    /// One pass of every controller.
    pub fn tick(&mut self) {
        self.deployments();
        self.replicasets();
        self.statefulsets();
        self.kubelet();
    }

    fn kubelet(&mut self) {
        let now = Instant::now();
        for pod in self.store.all(&self.pods.key()) {
            let uid = s(&pod, "/metadata/uid").to_string();
            let ns = s(&pod, "/metadata/namespace").to_string();
            let name = s(&pod, "/metadata/name").to_string();
            let born = *self.seen.entry(uid.clone()).or_insert(now);
            if terminating(&pod) {
                let since = *self.terminating.entry(uid.clone()).or_insert(now);
                if now.duration_since(since) >= self.timing.terminate {
                    self.apps.stop(&ns, &name);
                    self.store.finish_deletion(&self.pods, &ns, &name);
                    self.seen.remove(&uid);
                    self.terminating.remove(&uid);
                }
                continue;
            }
            let image = s(&pod, "/spec/containers/0/image").to_string();
            let container = s(&pod, "/spec/containers/0/name").to_string();
            let phase = s(&pod, "/status/phase").to_string();
            let age = now.duration_since(born);
            let ready_profile = self.apps.is_ready_profile(&image);
            if phase.is_empty() || phase == "Pending" {
                if phase.is_empty() {
                    let _ = self.store.mutate(&self.pods, &ns, &name, |p| {
                        p["status"] = json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": now_rfc3339()}], "qosClass": "BestEffort"});
                    });
                }
                if age >= self.timing.start {
                    self.apps.start(&ns, &name, &container, &image);
                    let t = now_rfc3339();
                    let n_ip = self.counter % 250 + 2;
                    self.counter += 1;
                    let _ = self.store.mutate(&self.pods, &ns, &name, |p| {
                        p["status"] = json!({
                            "phase": "Running", "startTime": t, "podIP": format!("10.1.0.{n_ip}"), "hostIP": "10.0.0.1", "qosClass": "BestEffort",
                            "conditions": [
                                {"type": "PodScheduled", "status": "True", "lastTransitionTime": t},
                                {"type": "Initialized", "status": "True", "lastTransitionTime": t},
                                {"type": "ContainersReady", "status": "False", "lastTransitionTime": t},
                                {"type": "Ready", "status": "False", "lastTransitionTime": t}
                            ],
                            "containerStatuses": [{"name": container, "image": image, "imageID": "", "ready": false, "restartCount": 0, "started": true,
                                "state": {"running": {"startedAt": t}}}]
                        });
                    });
                }
                continue;
            }
            if phase == "Running" {
                let restarts = self.apps.restarts(&ns, &name);
                if !ready_profile {
                    let _ = self.store.mutate(&self.pods, &ns, &name, |p| {
                        p["status"]["containerStatuses"][0]["restartCount"] = json!(restarts);
                        if restarts > 0 {
                            p["status"]["containerStatuses"][0]["state"] = json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off restarting failed container"}});
                            p["status"]["containerStatuses"][0]["started"] = json!(false);
                        }
                    });
                } else if !pod_ready(&pod) && age >= self.timing.start + self.timing.ready {
                    let t = now_rfc3339();
                    let _ = self.store.mutate(&self.pods, &ns, &name, |p| {
                        if let Some(Value::Array(cs)) = p.pointer_mut("/status/conditions") {
                            for c in cs.iter_mut() {
                                if matches!(
                                    c["type"].as_str(),
                                    Some("Ready") | Some("ContainersReady")
                                ) {
                                    c["status"] = json!("True");
                                    c["lastTransitionTime"] = json!(t);
                                }
                            }
                        }
                        p["status"]["containerStatuses"][0]["ready"] = json!(true);
                    });
                }
            }
        }
    }

    fn create_pod(
        &mut self,
        ns: &str,
        name: &str,
        template: &Value,
        owner: &Value,
        extra_labels: &[(&str, String)],
    ) {
        let mut labels = template
            .pointer("/metadata/labels")
            .cloned()
            .unwrap_or_else(|| json!({}));
        for (k, v) in extra_labels {
            labels[*k] = json!(v);
        }
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": name, "namespace": ns, "labels": labels,
                "annotations": template.pointer("/metadata/annotations").cloned().unwrap_or_else(|| json!({})),
                "ownerReferences": [owner_ref(owner)],
            },
            "spec": template.get("spec").cloned().unwrap_or_else(|| json!({})),
        });
        let _ = self.store.create(&self.pods, ns, pod);
    }

    fn replicasets(&mut self) {
        let pods = self.store.all(&self.pods.key());
        for rs in self.store.all(&self.rs.key()) {
            if terminating(&rs) {
                continue;
            }
            let ns = s(&rs, "/metadata/namespace").to_string();
            let name = s(&rs, "/metadata/name").to_string();
            let uid = s(&rs, "/metadata/uid").to_string();
            let want = i(&rs, "/spec/replicas");
            let mut mine: Vec<&Value> = pods
                .iter()
                .filter(|p| owned_by(p, &uid) && !terminating(p))
                .collect();
            let have = mine.len() as i64;
            if have < want {
                let template = rs
                    .pointer("/spec/template")
                    .cloned()
                    .unwrap_or_else(|| json!({}));
                for _ in have..want {
                    self.counter += 1;
                    let pod_name = format!("{name}-{}", name_suffix(self.counter));
                    self.create_pod(&ns, &pod_name, &template, &rs, &[]);
                }
            } else if have > want {
                // Not-ready pods go first, then the youngest.
                mine.sort_by_key(|p| {
                    (
                        pod_ready(p),
                        std::cmp::Reverse(s(p, "/metadata/creationTimestamp").to_string()),
                    )
                });
                for p in mine.iter().take((have - want) as usize) {
                    let _ = self.store.delete(
                        &self.pods,
                        &ns,
                        s(p, "/metadata/name"),
                        Propagation::Background,
                        None,
                    );
                }
            }
            let live: Vec<&Value> = pods
                .iter()
                .filter(|p| owned_by(p, &uid) && !terminating(p))
                .collect();
            let ready = live.iter().filter(|p| pod_ready(p)).count() as i64;
            let generation = i(&rs, "/metadata/generation");
            let status = json!({
                "replicas": live.len(), "fullyLabeledReplicas": live.len(), "readyReplicas": ready,
                "availableReplicas": ready, "observedGeneration": generation,
            });
            if rs.get("status") != Some(&status) {
                let _ = self
                    .store
                    .mutate(&self.rs, &ns, &name, |r| r["status"] = status);
            }
        }
    }

    fn deployments(&mut self) {
        let all_rs = self.store.all(&self.rs.key());
        for d in self.store.all(&self.deploy.key()) {
            if terminating(&d) {
                continue;
            }
            let ns = s(&d, "/metadata/namespace").to_string();
            let name = s(&d, "/metadata/name").to_string();
            let uid = s(&d, "/metadata/uid").to_string();
            let desired = i(&d, "/spec/replicas");
            let template = d
                .pointer("/spec/template")
                .cloned()
                .unwrap_or_else(|| json!({}));
            let hash = short_hash(&template);
            let owned: Vec<&Value> = all_rs
                .iter()
                .filter(|r| owned_by(r, &uid) && !terminating(r))
                .collect();
            let new_rs = owned
                .iter()
                .find(|r| s(r, "/metadata/labels/pod-template-hash") == hash)
                .copied();
            let olds: Vec<&Value> = owned
                .iter()
                .filter(|r| s(r, "/metadata/labels/pod-template-hash") != hash)
                .copied()
                .collect();
            let old_total: i64 = olds.iter().map(|r| i(r, "/spec/replicas")).sum();
            let recreate = s(&d, "/spec/strategy/type") == "Recreate";
            let max_surge = if recreate {
                0
            } else {
                int_or_percent(
                    d.pointer("/spec/strategy/rollingUpdate/maxSurge"),
                    desired,
                    true,
                    25,
                )
            };
            let mut max_unavailable = if recreate {
                desired
            } else {
                int_or_percent(
                    d.pointer("/spec/strategy/rollingUpdate/maxUnavailable"),
                    desired,
                    false,
                    25,
                )
            };
            if max_surge == 0 && max_unavailable == 0 {
                max_unavailable = 1;
            }
            let Some(new_rs) = new_rs else {
                let rs_name = format!("{name}-{hash}");
                let mut t = template.clone();
                t["metadata"]["labels"]["pod-template-hash"] = json!(hash);
                let mut selector = d
                    .pointer("/spec/selector")
                    .cloned()
                    .unwrap_or_else(|| json!({}));
                selector["matchLabels"]["pod-template-hash"] = json!(hash);
                let mut labels = template
                    .pointer("/metadata/labels")
                    .cloned()
                    .unwrap_or_else(|| json!({}));
                labels["pod-template-hash"] = json!(hash);
                let replicas = if old_total == 0 { desired } else { 0 };
                let rs = json!({
                    "apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "metadata": {"name": rs_name, "namespace": ns, "labels": labels, "ownerReferences": [owner_ref(&d)],
                        "annotations": {"deployment.kubernetes.io/desired-replicas": desired.to_string()}},
                    "spec": {"replicas": replicas, "selector": selector, "template": t},
                });
                let _ = self.store.create(&self.rs, &ns, rs);
                continue;
            };
            let new_name = s(new_rs, "/metadata/name").to_string();
            let new_replicas = i(new_rs, "/spec/replicas");
            let mut new_target = new_replicas;
            if recreate {
                let old_pods: i64 = olds.iter().map(|r| i(r, "/status/replicas")).sum();
                for r in &olds {
                    self.scale_rs(r, 0);
                }
                if old_pods == 0 {
                    new_target = desired;
                }
            } else {
                if new_replicas > desired || olds.is_empty() {
                    new_target = desired;
                } else if new_replicas < desired {
                    let allowed = desired + max_surge - (new_replicas + old_total);
                    new_target = (new_replicas + allowed.max(0)).min(desired);
                }
                let available: i64 = owned
                    .iter()
                    .map(|r| i(r, "/status/availableReplicas"))
                    .sum();
                let mut can_remove = (available - (desired - max_unavailable)).max(0);
                let mut olds_sorted = olds.clone();
                olds_sorted.sort_by_key(|r| s(r, "/metadata/creationTimestamp").to_string());
                for r in olds_sorted {
                    let rep = i(r, "/spec/replicas");
                    if rep == 0 {
                        continue;
                    }
                    let unhealthy = (rep - i(r, "/status/availableReplicas")).max(0);
                    let remove = rep.min(unhealthy + can_remove);
                    can_remove = (can_remove - (remove - unhealthy).max(0)).max(0);
                    if remove > 0 {
                        self.scale_rs(r, rep - remove);
                    }
                }
            }
            if new_target != new_replicas {
                let _ = self.store.mutate(&self.rs, &ns, &new_name, |r| {
                    r["spec"]["replicas"] = json!(new_target)
                });
            }
            let sum = |p: &str| -> i64 { owned.iter().map(|r| i(r, p)).sum() };
            let replicas = sum("/status/replicas");
            let ready = sum("/status/readyReplicas");
            let available = sum("/status/availableReplicas");
            let updated = i(new_rs, "/status/replicas");
            let new_synced =
                i(new_rs, "/status/observedGeneration") >= i(new_rs, "/metadata/generation");
            let complete =
                updated == desired && available >= desired && replicas == desired && new_synced;
            let old_status = d.get("status").cloned().unwrap_or_else(|| json!({}));
            let cond = |t: &str, ok: bool, reason: &str, msg: String| {
                let prev = old_status
                    .get("conditions")
                    .and_then(Value::as_array)
                    .and_then(|cs| cs.iter().find(|c| s(c, "/type") == t).cloned());
                let status = if ok { "True" } else { "False" };
                let since = match &prev {
                    Some(p) if s(p, "/status") == status => s(p, "/lastTransitionTime").to_string(),
                    _ => now_rfc3339(),
                };
                json!({"type": t, "status": status, "reason": reason, "message": msg, "lastTransitionTime": since, "lastUpdateTime": since})
            };
            let status = json!({
                "observedGeneration": i(&d, "/metadata/generation"),
                "replicas": replicas, "updatedReplicas": updated, "readyReplicas": ready,
                "availableReplicas": available, "unavailableReplicas": (desired - available).max(0),
                "conditions": [
                    cond("Available", available >= desired - max_unavailable, if available >= desired - max_unavailable { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" }, format!("{available} of {desired} available")),
                    cond("Progressing", true, if complete { "NewReplicaSetAvailable" } else { "ReplicaSetUpdated" }, format!("ReplicaSet \"{new_name}\" {}", if complete { "has successfully progressed" } else { "is progressing" })),
                ],
            });
            if d.get("status") != Some(&status) {
                let _ = self
                    .store
                    .mutate(&self.deploy, &ns, &name, |x| x["status"] = status);
            }
        }
    }

    fn scale_rs(&self, rs: &Value, replicas: i64) {
        if i(rs, "/spec/replicas") != replicas {
            let _ = self.store.mutate(
                &self.rs,
                s(rs, "/metadata/namespace"),
                s(rs, "/metadata/name"),
                |r| r["spec"]["replicas"] = json!(replicas),
            );
        }
    }

    fn statefulsets(&mut self) {
        let pods = self.store.all(&self.pods.key());
        let revs = self.store.all(&self.revs.key());
        for st in self.store.all(&self.sts.key()) {
            if terminating(&st) {
                continue;
            }
            let ns = s(&st, "/metadata/namespace").to_string();
            let name = s(&st, "/metadata/name").to_string();
            let uid = s(&st, "/metadata/uid").to_string();
            let n = i(&st, "/spec/replicas");
            let template = st
                .pointer("/spec/template")
                .cloned()
                .unwrap_or_else(|| json!({}));
            let update_rev = format!("{name}-{}", short_hash(&template));
            let mine_revs: Vec<&Value> = revs.iter().filter(|r| owned_by(r, &uid)).collect();
            if !mine_revs
                .iter()
                .any(|r| s(r, "/metadata/name") == update_rev)
            {
                let number = mine_revs
                    .iter()
                    .map(|r| i(r, "/revision"))
                    .max()
                    .unwrap_or(0)
                    + 1;
                let rev = json!({
                    "apiVersion": "apps/v1", "kind": "ControllerRevision",
                    "metadata": {"name": update_rev, "namespace": ns, "labels": template.pointer("/metadata/labels").cloned().unwrap_or_else(|| json!({})), "ownerReferences": [owner_ref(&st)]},
                    "data": {"spec": {"template": template}}, "revision": number,
                });
                let _ = self.store.create(&self.revs, &ns, rev);
                continue;
            }
            let current_rev = match s(&st, "/status/currentRevision") {
                "" => update_rev.clone(),
                c => c.to_string(),
            };
            let template_of_rev = |rev: &str| -> Value {
                mine_revs
                    .iter()
                    .find(|r| s(r, "/metadata/name") == rev)
                    .and_then(|r| r.pointer("/data/spec/template").cloned())
                    .unwrap_or_else(|| template.clone())
            };
            let partition = i(&st, "/spec/updateStrategy/rollingUpdate/partition");
            let rolling = s(&st, "/spec/updateStrategy/type") != "OnDelete";
            let parallel = s(&st, "/spec/podManagementPolicy") == "Parallel";
            let mine: Vec<&Value> = pods.iter().filter(|p| owned_by(p, &uid)).collect();
            let by_ordinal = |k: i64| {
                mine.iter()
                    .find(|p| s(p, "/metadata/name") == format!("{name}-{k}"))
                    .copied()
            };
            let any_terminating = mine.iter().any(|p| terminating(p));
            // Create missing ordinals in order.
            for k in 0..n {
                if by_ordinal(k).is_some() {
                    continue;
                }
                let lower_ready = (0..k).all(|j| by_ordinal(j).is_some_and(pod_ready));
                if !parallel && !lower_ready {
                    break;
                }
                let rev = if k >= partition {
                    update_rev.clone()
                } else {
                    current_rev.clone()
                };
                let t = template_of_rev(&rev);
                let pod_name = format!("{name}-{k}");
                self.create_pod(
                    &ns,
                    &pod_name,
                    &t,
                    &st,
                    &[
                        ("controller-revision-hash", rev.clone()),
                        ("statefulset.kubernetes.io/pod-name", pod_name.clone()),
                        ("apps.kubernetes.io/pod-index", k.to_string()),
                    ],
                );
                if !parallel {
                    break;
                }
            }
            // Scale down from the highest ordinal.
            for p in &mine {
                let ordinal: i64 = s(p, "/metadata/name")
                    .rsplit('-')
                    .next()
                    .and_then(|x| x.parse().ok())
                    .unwrap_or(-1);
                if ordinal >= n && !terminating(p) {
                    let _ = self.store.delete(
                        &self.pods,
                        &ns,
                        s(p, "/metadata/name"),
                        Propagation::Background,
                        None,
                    );
                }
            }
            // Rolling update: one pod at a time, highest ordinal first, down to the partition.
            let all_ready = (0..n).all(|k| by_ordinal(k).is_some_and(pod_ready));
            if rolling && all_ready && !any_terminating {
                for k in (partition.max(0)..n).rev() {
                    if let Some(p) = by_ordinal(k)
                        && s(p, "/metadata/labels/controller-revision-hash") != update_rev
                    {
                        let _ = self.store.delete(
                            &self.pods,
                            &ns,
                            s(p, "/metadata/name"),
                            Propagation::Background,
                            None,
                        );
                        break;
                    }
                }
            }
            let live: Vec<&&Value> = mine.iter().filter(|p| !terminating(p)).collect();
            let ready = live.iter().filter(|p| pod_ready(p)).count() as i64;
            let updated = live
                .iter()
                .filter(|p| s(p, "/metadata/labels/controller-revision-hash") == update_rev)
                .count() as i64;
            let current_count = live
                .iter()
                .filter(|p| s(p, "/metadata/labels/controller-revision-hash") == current_rev)
                .count() as i64;
            let new_current = if updated == n && ready == n && live.len() as i64 == n {
                update_rev.clone()
            } else {
                current_rev.clone()
            };
            let status = json!({
                "observedGeneration": i(&st, "/metadata/generation"),
                "replicas": live.len(), "readyReplicas": ready, "availableReplicas": ready,
                "currentReplicas": if new_current == update_rev { updated } else { current_count },
                "updatedReplicas": updated, "currentRevision": new_current, "updateRevision": update_rev,
                "collisionCount": 0,
            });
            if st.get("status") != Some(&status) {
                let _ = self
                    .store
                    .mutate(&self.sts, &ns, &name, |x| x["status"] = status);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_or_percent_rounds_like_kubernetes() {
        assert_eq!(int_or_percent(Some(&json!("25%")), 10, true, 25), 3);
        assert_eq!(int_or_percent(Some(&json!("25%")), 10, false, 25), 2);
        assert_eq!(int_or_percent(Some(&json!(2)), 10, false, 25), 2);
        assert_eq!(int_or_percent(None, 4, true, 25), 1);
    }
}
