//! StatefulSet targets, partition style: the new template is written at once and
//! `rollingUpdate.partition = N − n` lets only the highest `n` ordinals update.

use super::{Ctx, Error, same_template, template_of};
use crate::api::{ANN_CHANGE, ANN_FAILED, ANN_HELD, ANN_PARTITION, ANN_RUNNING};
use crate::workload::{Step, WorkloadObs};
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch};
use kube::{Api, ResourceExt};
use serde_json::json;

fn partition_of(s: &StatefulSet) -> i32 {
    s.spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .unwrap_or(0)
}

fn pod_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Observe the StatefulSet against the step the status asks for.
pub async fn observe(ctx: &Ctx<'_>, step: Option<&Step>) -> Result<Option<WorkloadObs>, Error> {
    let api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), ctx.ns);
    let Some(sts) = api.get_opt(&ctx.cr.spec.target.name).await? else {
        return Ok(None);
    };
    let spec = sts.spec.clone().unwrap_or_default();
    let st = sts.status.clone().unwrap_or_default();
    let template = template_of(&Some(&spec.template))?;
    let selector = spec.selector.match_labels.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1);
    let caught_up = st.observed_generation.unwrap_or(0) >= sts.metadata.generation.unwrap_or(0);
    let ready = st.ready_replicas.unwrap_or(0);
    let current = st.current_revision.clone().unwrap_or_default();
    let update = st.update_revision.clone().unwrap_or_default();
    let guarded_hold = ctx.cr.spec.policy.is_some() && held(&sts);
    // Held by the webhook, the update revision is the held template and no pod runs it yet.
    let settled = current == update
        || update.is_empty()
        || (guarded_hold && st.updated_replicas.unwrap_or(0) == 0);
    let healthy = caught_up && ready == replicas && st.replicas == replicas && settled;
    let unhealthy_reason = if healthy {
        String::new()
    } else {
        format!("{ready}/{replicas} ready, current revision {current}, update revision {update}")
    };
    let status = ctx.cr.status.clone().unwrap_or_default();
    let n_total = status.original_replicas.unwrap_or(replicas);
    let original_partition = status.original_partition.unwrap_or(0);
    // A guarded StatefulSet holds the new template; its pods run the current revision's.
    let running = if guarded_hold && !update.is_empty() && current != update {
        revision_template(ctx, &current).await?
    } else {
        None
    };
    // Pods at the update revision, ready: the change group as far as readiness goes.
    let changed_ready = if step.is_some() && !update.is_empty() {
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ctx.ns);
        let mut sel: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        sel.push(format!("controller-revision-hash={update}"));
        pods.list(&ListParams::default().labels(&sel.join(",")))
            .await?
            .items
            .iter()
            .filter(|p| pod_ready(p))
            .count() as i32
    } else {
        0
    };
    let stable = status
        .stable_template
        .clone()
        .unwrap_or_else(|| template.clone());
    let updated = st.updated_replicas.unwrap_or(0);
    let step_reached = match step {
        None => false,
        Some(Step::Batch { changed, .. }) => {
            let new_template = ctx.new_template(&stable, &selector)?;
            same_template(&template, &new_template)
                && partition_of(&sts) == n_total - changed
                && caught_up
                && updated == *changed
                && changed_ready == *changed
                && ready == n_total
        }
        Some(Step::Promote) => {
            let new_template = ctx.new_template(&stable, &selector)?;
            same_template(&template, &new_template)
                && partition_of(&sts) == original_partition
                && caught_up
                && updated == n_total
                && changed_ready == n_total
                && ready == n_total
        }
        Some(Step::Restore) if guarded_hold => {
            partition_of(&sts) >= n_total && caught_up && updated == 0 && ready == n_total
        }
        Some(Step::Restore) => {
            same_template(&template, &stable)
                && partition_of(&sts) == original_partition
                && caught_up
                && updated == n_total
                && ready == n_total
                && status
                    .stable_revision
                    .as_deref()
                    .is_none_or(|r| r == update)
        }
    };
    Ok(Some(WorkloadObs {
        live_replicas: None,
        autoscaler: None,
        replicas,
        healthy,
        unhealthy_reason,
        template,
        selector,
        revision: current,
        running,
        // Held by the webhook, the partition before the hold is the one to come back to.
        partition: Some(if guarded_hold {
            sts.annotations()
                .get(ANN_PARTITION)
                .and_then(|p| p.parse().ok())
                .unwrap_or(0)
        } else {
            partition_of(&sts)
        }),
        changed_ready: if matches!(step, Some(Step::Restore)) {
            0
        } else {
            changed_ready
        },
        step_reached,
        ..Default::default()
    }))
}

/// Bring the StatefulSet to `step`. Calls the API only where the cluster differs.
pub async fn ensure(ctx: &Ctx<'_>, step: &Step) -> Result<(), Error> {
    let api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), ctx.ns);
    let Some(sts) = api.get_opt(&ctx.cr.spec.target.name).await? else {
        return Ok(());
    };
    let spec = sts.spec.clone().unwrap_or_default();
    let template = template_of(&Some(&spec.template))?;
    let selector = spec.selector.match_labels.clone().unwrap_or_default();
    let status = ctx.cr.status.clone().unwrap_or_default();
    let n_total = status.original_replicas.unwrap_or(1);
    let original_partition = status.original_partition.unwrap_or(0);
    let stable = status
        .stable_template
        .clone()
        .unwrap_or_else(|| template.clone());
    let guarded_hold = ctx.cr.spec.policy.is_some() && held(&sts);
    if guarded_hold && matches!(step, Step::Restore) {
        return hold_again(ctx, &api, &sts, &selector, &status).await;
    }
    let (wanted_template, wanted_partition) = match step {
        Step::Batch { changed, .. } => (ctx.new_template(&stable, &selector)?, n_total - changed),
        Step::Promote => (ctx.new_template(&stable, &selector)?, original_partition),
        Step::Restore => (stable, original_partition),
    };
    let mut ops = Vec::new();
    if !same_template(&template, &wanted_template) {
        ops.push(json!({"op": "replace", "path": "/spec/template", "value": wanted_template}));
    }
    let is_rolling = spec
        .update_strategy
        .as_ref()
        .and_then(|u| u.type_.as_deref())
        .is_none_or(|t| t == "RollingUpdate");
    if partition_of(&sts) != wanted_partition || !is_rolling {
        ops.push(
            json!({"op": "add", "path": "/spec/updateStrategy", "value": {
                "type": "RollingUpdate",
                "rollingUpdate": {"partition": wanted_partition}
            }}),
        );
    }
    if guarded_hold && matches!(step, Step::Promote) && ops.is_empty() {
        // Released: the StatefulSet runs the template it holds; graygate lets go of it.
        ctx.fence.check()?;
        let got = api
            .patch(
                &sts.name_any(),
                &crate::api::patch_params(crate::api::MANAGER_ROLLOUT),
                &Patch::Merge(json!({"metadata": {"annotations": {
                    ANN_HELD: null, ANN_RUNNING: null, ANN_PARTITION: null, ANN_CHANGE: null, ANN_FAILED: null
                }}})),
            )
            .await?;
        return crate::rollout::check_not_held("release", &sts, &got, true);
    }
    if ops.is_empty() {
        if matches!(step, Step::Restore) {
            ctx.fence.check()?;
            delete_stuck_pods(ctx, &selector, status.stable_revision.as_deref()).await?;
        }
        return Ok(());
    }
    // The partition goes first in the same request, so no pod beyond the batch ever updates.
    ops.reverse();
    ctx.fence.check()?;
    let got = api
        .patch(
            &sts.name_any(),
            &crate::api::patch_params(crate::api::MANAGER_ROLLOUT),
            &Patch::Json::<()>(serde_json::from_value(json!(ops))?),
        )
        .await?;
    if partition_of(&got) != wanted_partition {
        // The webhook raised it again: graygate's batch was held as a stranger's would be.
        return Err(Error::NotTaken(format!(
            "graygate's own batch of StatefulSet/{} (partition {wanted_partition}) came back with partition {}: held by the admission webhook, which does not trust graygate's identity; fix that, then resume the change",
            sts.name_any(),
            partition_of(&got)
        )));
    }
    crate::rollout::check_not_held("write", &sts, &got, false)
}

/// Held by graygate's webhook (the annotation it sets when it holds a template).
pub fn held(sts: &StatefulSet) -> bool {
    sts.annotations().contains_key(ANN_HELD)
}

/// The pod template a StatefulSet revision recorded.
pub async fn revision_template(
    ctx: &Ctx<'_>,
    revision: &str,
) -> Result<Option<serde_json::Value>, Error> {
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), ctx.ns);
    Ok(api
        .get_opt(revision)
        .await?
        .and_then(|r| r.data)
        .and_then(|d| d.0.pointer("/spec/template").cloned()))
}

/// A failed change of a guarded StatefulSet: the template stays as applied (the source of
/// truth holds it), the partition goes back to holding every pod, and the pods already on the
/// failed revision are replaced by the StatefulSet controller with the current revision.
async fn hold_again(
    ctx: &Ctx<'_>,
    api: &Api<StatefulSet>,
    sts: &StatefulSet,
    selector: &std::collections::BTreeMap<String, String>,
    status: &crate::api::ChangeRequestStatus,
) -> Result<(), Error> {
    let hold = crate::workload::HOLD_PARTITION as i32;
    if partition_of(sts) != hold {
        ctx.fence.check()?;
        let hash =
            crate::rollout::template_hash(&template_of(&sts.spec.as_ref().map(|s| &s.template))?);
        let failed = format!("{hash} ({})", ctx.cr.name_any());
        let superseded = status.reason.as_deref() == Some("Superseded");
        // Remembered across releases, for the webhook to say the template failed before.
        let list = crate::api::with_failed(
            sts.annotations().get(crate::api::ANN_FAILED_TEMPLATES),
            &hash,
        );
        api.patch(
            &sts.name_any(),
            &crate::api::patch_params(crate::api::MANAGER_ROLLOUT),
            &Patch::Merge(json!({
                // A superseded change did not fail: no failure marker for it.
                "metadata": {"annotations": {
                    ANN_FAILED: (!superseded).then_some(failed),
                    crate::api::ANN_FAILED_TEMPLATES: if superseded { sts.annotations().get(crate::api::ANN_FAILED_TEMPLATES).cloned() } else { Some(list) },
                }},
                "spec": {"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": hold}}},
            })),
        )
        .await?;
        return Ok(());
    }
    delete_off_revision(ctx, selector, status.stable_revision.as_deref(), false).await
}

/// After the template is restored the StatefulSet controller waits for every pod to be Ready
/// before it replaces the next one, so a pod of the bad revision that never became Ready would
/// block the rollback forever (Kubernetes asks for such pods to be deleted by hand). Delete them.
async fn delete_stuck_pods(
    ctx: &Ctx<'_>,
    selector: &std::collections::BTreeMap<String, String>,
    stable: Option<&str>,
) -> Result<(), Error> {
    delete_off_revision(ctx, selector, stable, true).await
}

/// Delete the live pods not at the `stable` revision (only the never-ready ones when
/// `only_unready`); the StatefulSet controller recreates them at the revision their ordinal gets.
async fn delete_off_revision(
    ctx: &Ctx<'_>,
    selector: &std::collections::BTreeMap<String, String>,
    stable: Option<&str>,
    only_unready: bool,
) -> Result<(), Error> {
    let Some(stable) = stable else { return Ok(()) };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ctx.ns);
    let mut sel: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    sel.push(format!("controller-revision-hash!={stable}"));
    for p in pods
        .list(&ListParams::default().labels(&sel.join(",")))
        .await?
        .items
    {
        if p.metadata.deletion_timestamp.is_none() && !(only_unready && pod_ready(&p)) {
            let name = p.name_any();
            tracing::info!(pod = %name, "deleting a pod of the failed revision so the rollback can proceed");
            ctx.fence.check()?;
            match pods.delete(&name, &Default::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}
