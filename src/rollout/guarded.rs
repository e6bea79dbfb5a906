//! Guarded Deployments: the Deployment already holds the new template, paused by graygate's
//! admission webhook, and its old ReplicaSet keeps serving. The canary is a ReplicaSet made the
//! way the Deployment controller makes one (the Deployment's own template plus a
//! `pod-template-hash` label), owned by the ChangeRequest while batches run, its pods running
//! beside the unchanged ones. On release it is handed to the Deployment, which finds it as its
//! new ReplicaSet and rolls the rest through its own rolling update: the verified pods stay, and
//! only the old ReplicaSet shrinks. Nothing is written to the Deployment's template, so Git (or
//! whoever applied it) stays the truth.

use super::{Ctx, Error, deployment, same_template, template_hash, template_of};
use crate::api::{
    ANN_CHANGE, ANN_FAILED, ANN_FAILED_TEMPLATES, ANN_HELD, ANN_RUNNING, MANAGER_ROLLOUT,
    patch_params, post_params,
};
use crate::cache::fenced_merge;
use crate::workload::{Step, WorkloadObs};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::Patch;
use kube::{Api, Resource, ResourceExt};
use serde_json::{Value, json};

const HASH_LABEL: &str = "pod-template-hash";

/// A Deployment is released when graygate no longer holds it.
pub fn released(d: &Deployment) -> bool {
    !d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false)
        && !d.annotations().contains_key(ANN_HELD)
}

/// The answer to graygate's release of `before`: still paused or held is an error at once.
pub fn check_released(before: &Deployment, got: &Deployment) -> Result<(), Error> {
    super::check_not_held("release", before, got, true)?;
    if !released(got) {
        // Paused again without the annotation: someone else's webhook.
        return Err(Error::NotTaken(format!(
            "graygate's own release of Deployment/{} came back paused: an admission webhook paused it again; resume the change once it lets graygate's writes through",
            got.name_any()
        )));
    }
    Ok(())
}

fn rs_template(rs: &ReplicaSet) -> Result<Value, Error> {
    let mut t = template_of(&rs.spec.as_ref().and_then(|s| s.template.as_ref()))?;
    if let Some(Value::Object(l)) = t.pointer_mut("/metadata/labels") {
        l.remove(HASH_LABEL);
    }
    Ok(t)
}

pub(super) fn revision(rs: &ReplicaSet) -> i64 {
    rs.annotations()
        .get("deployment.kubernetes.io/revision")
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

pub(super) fn owned_by(rs: &ReplicaSet, d: &Deployment) -> bool {
    rs.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == d.metadata.uid.as_ref())
}

/// The ReplicaSet whose pods serve while the Deployment holds a new template: the one of the
/// Deployment's own ReplicaSets with pods and the highest revision (read from `cache` when given).
pub async fn running_set(
    client: &kube::Client,
    cache: Option<&crate::cache::Caches>,
    ns: &str,
    d: &Deployment,
    except: Option<&str>,
) -> Result<Option<ReplicaSet>, Error> {
    let sel = d
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default();
    let sets = super::list_labelled::<ReplicaSet>(client, cache, ns, &sel).await?;
    Ok(pick_running(sets, d, except))
}

fn pick_running(sets: Vec<ReplicaSet>, d: &Deployment, except: Option<&str>) -> Option<ReplicaSet> {
    let mut sets: Vec<ReplicaSet> = sets
        .into_iter()
        .filter(|rs| owned_by(rs, d) && Some(rs.name_any().as_str()) != except)
        .filter(|rs| rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0) > 0)
        .collect();
    sets.sort_by_key(revision);
    sets.pop()
}

/// The template the pods of a held Deployment run, when it differs from the one it holds.
pub async fn running_template(
    client: &kube::Client,
    cache: Option<&crate::cache::Caches>,
    ns: &str,
    d: &Deployment,
) -> Result<Option<(Value, String)>, Error> {
    let Some(rs) = running_set(client, cache, ns, d, None).await? else {
        return Ok(None);
    };
    let t = rs_template(&rs)?;
    let held = template_of(&d.spec.as_ref().map(|s| &s.template))?;
    if same_template(&t, &held) {
        return Ok(None);
    }
    let hash = rs.labels().get(HASH_LABEL).cloned().unwrap_or_default();
    Ok(Some((t, hash)))
}

fn rs_counts(rs: &ReplicaSet) -> (i32, i32, i32, bool) {
    let spec = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let st = rs.status.clone().unwrap_or_default();
    let caught_up = st.observed_generation.unwrap_or(0) >= rs.metadata.generation.unwrap_or(0);
    (
        spec,
        st.replicas,
        st.available_replicas
            .unwrap_or(0)
            .min(st.ready_replicas.unwrap_or(0)),
        caught_up,
    )
}

/// Observe a guarded Deployment against the step the status asks for.
pub async fn observe(ctx: &Ctx<'_>, step: Option<&Step>) -> Result<Option<WorkloadObs>, Error> {
    let Some(d) = ctx
        .read_existing::<Deployment>(&ctx.cr.spec.target.name)
        .await?
    else {
        return Ok(None);
    };
    let status = ctx.cr.status.clone().unwrap_or_default();
    if released(&d) && matches!(step, Some(Step::Restore)) && status.canary_name.is_some() {
        // Released, then failed in the last bake: the ordinary rollback writes the old template.
        let canary = canary(ctx).await?;
        if canary.as_ref().is_some_and(|c| !owned_by(c, &d)) {
            // Not adopted yet: the hold was lifted by hand, the canary is still ours.
        } else {
            return deployment::observe(ctx, step).await;
        }
    }
    let template = template_of(&d.spec.as_ref().map(|s| &s.template))?;
    let selector = d
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default();
    let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let canary_name = status.canary_name.clone();
    let stable = running_set(ctx.client, ctx.cache, ctx.ns, &d, canary_name.as_deref()).await?;
    let running = match &stable {
        Some(rs) if !same_template(&rs_template(rs)?, &template) => Some(rs_template(rs)?),
        _ => None,
    };
    let stable_hash = stable
        .as_ref()
        .and_then(|rs| rs.labels().get(HASH_LABEL).cloned())
        .unwrap_or_default();
    let (s_spec, s_total, s_avail, s_caught) = stable.as_ref().map_or((0, 0, 0, true), rs_counts);
    let healthy = s_caught && s_spec == replicas && s_total == replicas && s_avail == replicas;
    let unhealthy_reason = if healthy {
        String::new()
    } else {
        format!("{s_avail}/{replicas} available on the running ReplicaSet, {s_total} pods")
    };
    let n_total = status.original_replicas.unwrap_or(replicas);
    let canary = canary(ctx).await?;
    let new_template = new_template(ctx, &template)?;
    let (changed_ready, step_reached) = match step {
        None => (0, false),
        Some(Step::Batch { changed, .. }) => match &canary {
            Some(c) => {
                let (c_spec, c_total, c_avail, c_caught) = rs_counts(c);
                let ok = c_caught
                    && c_spec == *changed
                    && c_total == *changed
                    && c_avail == *changed
                    && s_avail >= n_total.min(replicas);
                (c_avail, ok)
            }
            None => (0, false),
        },
        Some(Step::Promote) => {
            if !same_template(&template, &new_template) {
                // Queued behind a newer template: this change is judged but not released.
                (0, canary.is_none())
            } else {
                let st = d.status.clone().unwrap_or_default();
                let caught_up =
                    st.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0);
                let updated = st.updated_replicas.unwrap_or(0);
                let available = st
                    .available_replicas
                    .unwrap_or(0)
                    .min(st.ready_replicas.unwrap_or(0));
                let total = st.replicas.unwrap_or(0);
                let ready = updated.min(available);
                (
                    ready,
                    released(&d)
                        && caught_up
                        && updated == replicas
                        && total == replicas
                        && ready == replicas,
                )
            }
        }
        Some(Step::Restore) => (0, canary.is_none() && healthy),
    };
    Ok(Some(WorkloadObs {
        // The Deployment (and an autoscaler) own the replica count: batches follow it.
        live_replicas: Some(replicas),
        autoscaler: super::autoscaler(ctx).await?,
        replicas,
        healthy,
        unhealthy_reason,
        revision: stable_hash,
        template,
        running,
        selector,
        partition: None,
        changed_ready,
        step_reached,
        ..Default::default()
    }))
}

async fn canary(ctx: &Ctx<'_>) -> Result<Option<ReplicaSet>, Error> {
    let status = ctx.cr.status.clone().unwrap_or_default();
    let Some(name) = status.canary_name else {
        return Ok(None);
    };
    ctx.read::<ReplicaSet>(&name).await
}

fn new_template(ctx: &Ctx<'_>, held: &Value) -> Result<Value, Error> {
    let status = ctx.cr.status.clone().unwrap_or_default();
    let Some(base) = status.stable_template else {
        // Not started: the change's template as it stands (the state machine checks it at start).
        return Ok(ctx.cr.spec.template.clone().unwrap_or_else(|| held.clone()));
    };
    let selector = Default::default();
    crate::rollout::template::apply_spec(&base, &ctx.cr.spec, &selector)
        .map_err(|e| Error::Spec(e.to_string()))
}

/// The Deployment controller's surge allowance for `replicas` pods (a percentage rounds up; 25%
/// by default), i.e. how many pods of the new ReplicaSet may exist before any old one goes.
pub fn max_surge(d: &Deployment, replicas: i32) -> i32 {
    let strategy = d.spec.as_ref().and_then(|s| s.strategy.clone());
    if strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .is_some_and(|t| t == "Recreate")
    {
        return 0;
    }
    let ru = strategy.and_then(|s| s.rolling_update);
    let resolve = |v: Option<IntOrString>, up: bool| -> i32 {
        match v.unwrap_or(IntOrString::String("25%".into())) {
            IntOrString::Int(i) => i,
            IntOrString::String(s) => {
                let p: f64 = s.trim_end_matches('%').parse().unwrap_or(25.0);
                let x = p * replicas as f64 / 100.0;
                if up {
                    x.ceil() as i32
                } else {
                    x.floor() as i32
                }
            }
        }
    };
    let surge = resolve(ru.as_ref().and_then(|r| r.max_surge.clone()), true);
    let unavailable = resolve(ru.as_ref().and_then(|r| r.max_unavailable.clone()), false);
    // The controller's fencepost: both zero means one unavailable, no surge.
    if surge == 0 && unavailable == 0 {
        0
    } else {
        surge
    }
}

/// Bring the guarded Deployment and its canary to `step`. Calls the API only where they differ.
pub async fn ensure(ctx: &Ctx<'_>, step: &Step) -> Result<(), Error> {
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), ctx.ns);
    let Some(d) = ctx
        .read_existing::<Deployment>(&ctx.cr.spec.target.name)
        .await?
    else {
        return Ok(());
    };
    let status = ctx.cr.status.clone().unwrap_or_default();
    let Some(name) = status.canary_name.clone() else {
        return Ok(());
    };
    let rs_api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), ctx.ns);
    let canary = ctx.read::<ReplicaSet>(&name).await?;
    let template = template_of(&d.spec.as_ref().map(|s| &s.template))?;
    let new_template = new_template(ctx, &template)?;
    match step {
        Step::Batch { changed, .. } => match canary {
            None => create_canary(ctx, &rs_api, &d, &name, *changed, &new_template).await?,
            Some(c) if rs_counts(&c).0 != *changed => {
                ctx.fence.check()?;
                scale_set(&rs_api, &c, *changed).await?;
            }
            Some(_) => {}
        },
        Step::Promote => {
            if !same_template(&template, &new_template) {
                // The workload holds a newer template (queued): nothing of this one is released.
                if canary.is_some() {
                    ctx.fence.check()?;
                    super::delete_in_background(&rs_api, &name).await?;
                }
                return Ok(());
            }
            match canary {
                Some(c) if !owned_by(&c, &d) => {
                    // Hand over at exactly the surge allowance: a paused Deployment that adopts a
                    // second active ReplicaSet scales its sets proportionally, and only at this
                    // size does that add no pod of the old template.
                    let wanted = max_surge(&d, status.original_replicas.unwrap_or(1));
                    let (spec, total, _, caught_up) = rs_counts(&c);
                    if spec != wanted {
                        ctx.fence.check()?;
                        scale_set(&rs_api, &c, wanted).await?;
                    } else if caught_up && total == wanted {
                        let owner = d.controller_owner_ref(&()).ok_or(Error::NoNamespace)?;
                        ctx.fence.check()?;
                        rs_api
                            .patch(
                                &name,
                                &patch_params(MANAGER_ROLLOUT),
                                &Patch::Merge(fenced_merge(
                                    &c,
                                    json!({"metadata": {"ownerReferences": [owner]}}),
                                )),
                            )
                            .await?;
                    }
                }
                _ => {
                    if !released(&d) {
                        ctx.fence.check()?;
                        let got = api.patch(
                            &d.name_any(),
                            &patch_params(MANAGER_ROLLOUT),
                            &Patch::Merge(fenced_merge(&d, json!({
                                "metadata": {"annotations": {ANN_HELD: null, ANN_RUNNING: null, ANN_CHANGE: null, ANN_FAILED: null}},
                                "spec": {"paused": false},
                            }))),
                        )
                        .await?;
                        check_released(&d, &got)?;
                    }
                }
            }
        }
        Step::Restore => {
            if released(&d) && canary.as_ref().is_none_or(|c| owned_by(c, &d)) {
                return deployment::ensure(ctx, step).await;
            }
            if canary.is_some() {
                ctx.fence.check()?;
                super::delete_in_background(&rs_api, &name).await?;
            }
            let hash = template_hash(&new_template);
            let failed = format!("{hash} ({})", ctx.cr.name_any());
            // Remembered across releases, for the webhook to say the template failed before.
            let list = crate::api::with_failed(d.annotations().get(ANN_FAILED_TEMPLATES), &hash);
            // A superseded change did not fail: no failure marker for it.
            let superseded =
                ctx.cr.status.as_ref().and_then(|s| s.reason.as_deref()) == Some("Superseded");
            if !superseded
                && (d.annotations().get(ANN_FAILED) != Some(&failed)
                    || d.annotations().get(ANN_FAILED_TEMPLATES) != Some(&list))
                && !released(&d)
            {
                ctx.fence.check()?;
                api.patch(
                    &d.name_any(),
                    &patch_params(MANAGER_ROLLOUT),
                    &Patch::Merge(fenced_merge(&d, json!({"metadata": {"annotations": {ANN_FAILED: failed, ANN_FAILED_TEMPLATES: list}}}))),
                )
                .await?;
            }
        }
    }
    Ok(())
}

async fn scale_set(api: &Api<ReplicaSet>, rs: &ReplicaSet, replicas: i32) -> Result<(), Error> {
    let got = api
        .patch(
            &rs.name_any(),
            &patch_params(MANAGER_ROLLOUT),
            &Patch::Merge(fenced_merge(rs, json!({"spec": {"replicas": replicas}}))),
        )
        .await?;
    let now = got.spec.as_ref().and_then(|s| s.replicas);
    if now != Some(replicas) {
        return Err(Error::NotTaken(format!(
            "graygate scaled ReplicaSet/{} to {replicas} and it came back at {}: something undoes graygate's writes (an admission webhook?)",
            rs.name_any(),
            now.unwrap_or(0)
        )));
    }
    Ok(())
}

async fn create_canary(
    ctx: &Ctx<'_>,
    api: &Api<ReplicaSet>,
    d: &Deployment,
    name: &str,
    replicas: i32,
    template: &Value,
) -> Result<(), Error> {
    let hash = template_hash(template);
    let mut template = template.clone();
    template["metadata"]["labels"][HASH_LABEL] = json!(hash);
    let mut selector = d
        .spec
        .as_ref()
        .map(|s| serde_json::to_value(&s.selector))
        .transpose()?
        .unwrap_or_else(|| json!({}));
    selector["matchLabels"][HASH_LABEL] = json!(hash);
    let labels = template["metadata"]["labels"].clone();
    let owner = ctx.cr.controller_owner_ref(&()).ok_or(Error::NoNamespace)?;
    let rs: ReplicaSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": name,
            "namespace": ctx.ns,
            "labels": labels,
            "annotations": {ANN_CHANGE: ctx.cr.name_any()},
            "ownerReferences": [owner],
        },
        "spec": {
            "replicas": replicas,
            "minReadySeconds": d.spec.as_ref().and_then(|s| s.min_ready_seconds),
            "selector": selector,
            "template": template,
        }
    }))?;
    ctx.fence.check()?;
    match api.create(&post_params(MANAGER_ROLLOUT), &rs).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guarded Deployment as the API server stores it: held by the webhook or released.
    fn deployment(paused: bool, held: Option<&str>) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop", "annotations": match held {
                Some(h) => json!({ANN_HELD: h}),
                None => json!({}),
            }},
            "spec": {"paused": paused, "selector": {}, "template": {}},
        }))
        .unwrap()
    }

    #[test]
    fn a_release_answered_still_held_fails_at_once_naming_the_webhook() {
        let before = deployment(true, Some("8c3d162265"));
        // The webhook did not trust graygate: paused again, the hold put back, and 200.
        let err = check_released(&before, &deployment(true, Some("8c3d162265"))).unwrap_err();
        assert_eq!(err.category(), "WriteNotTaken");
        assert!(
            err.to_string().starts_with(
                "graygate's own release of Deployment/web was held by the admission webhook: its identity is not trusted"
            ),
            "{err}"
        );
        // Paused again without graygate's annotation: another webhook undid it.
        let err = check_released(&before, &deployment(true, None)).unwrap_err();
        assert!(err.to_string().contains("came back paused"), "{err}");
        // Released as asked.
        assert!(check_released(&before, &deployment(false, None)).is_ok());
    }

    #[test]
    fn a_write_held_by_the_webhook_is_told_from_one_that_keeps_a_hold() {
        // A rollback write to a released Deployment that comes back held: not taken.
        let err = crate::rollout::check_not_held(
            "rollback",
            &deployment(false, None),
            &deployment(true, Some("aaaa")),
            false,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("rollback of Deployment/web"),
            "{err}"
        );
        // A write that leaves graygate's existing hold as it was (marking a failed template).
        assert!(
            crate::rollout::check_not_held(
                "write",
                &deployment(true, Some("aaaa")),
                &deployment(true, Some("aaaa")),
                false
            )
            .is_ok()
        );
    }
}
