//! A fresh baseline (`baseline: fresh`): pods of the old template started beside each batch's
//! canary, as many as it has (at most [`MAX_BASELINE_PODS`]), so that the canary is judged
//! against pods as young as its own. They run in a Deployment of their own, owned by the
//! ChangeRequest, with the target's selector labels (so they take their share of the traffic)
//! plus [`LABEL_BASELINE`]; they never count toward the target's replicas, and they are removed
//! when the change promotes, rolls back, is superseded or is deleted.

use super::template::with_label;
use super::{Ctx, Error, same_template};
use crate::api::{LABEL_BASELINE, LABEL_CHANGE, MAX_BASELINE_PODS};
use crate::workload::Step;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Patch;
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

/// Baseline pods for a batch of `changed` canary pods.
pub fn wanted(changed: i32) -> i32 {
    changed.clamp(1, MAX_BASELINE_PODS)
}

/// The baseline's pod template: the stable template, labelled as the baseline of this change.
fn template(ctx: &Ctx<'_>, stable: &Value) -> Value {
    let mut t = with_label(stable, LABEL_BASELINE, &ctx.cr.name_any());
    if let Some(l) = t
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        l.remove("pod-template-hash");
        l.remove(LABEL_CHANGE);
    }
    t
}

fn counts(d: &Deployment) -> (i32, i32, bool) {
    let spec = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let st = d.status.clone().unwrap_or_default();
    let caught_up = st.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0);
    let ready = st
        .available_replicas
        .unwrap_or(0)
        .min(st.ready_replicas.unwrap_or(0));
    (spec, ready, caught_up && st.replicas.unwrap_or(0) == spec)
}

/// Whether the baseline is where `step` wants it: `changed`'s share ready in a batch, gone
/// otherwise. True when the change has no fresh baseline.
pub async fn reached(ctx: &Ctx<'_>, step: Option<&Step>) -> Result<bool, Error> {
    let status = ctx.cr.status.clone().unwrap_or_default();
    let Some(name) = status.baseline_name else {
        return Ok(true);
    };
    let current = ctx.read::<Deployment>(&name).await?;
    Ok(match (step, current) {
        (Some(Step::Batch { changed, .. }), Some(d)) => {
            let (spec, ready, settled) = counts(&d);
            let want = wanted(*changed);
            let template_ok = status.stable_template.as_ref().is_some_and(|s| {
                let t =
                    super::template_of(&d.spec.as_ref().map(|s| &s.template)).unwrap_or_default();
                same_template(&t, &template(ctx, s))
            });
            template_ok && settled && spec == want && ready == want
        }
        (Some(Step::Batch { .. }), None) => false,
        (_, current) => current.is_none(),
    })
}

/// Bring the baseline to `step`: sized to the batch's canary, or removed.
pub async fn ensure(ctx: &Ctx<'_>, step: &Step) -> Result<(), Error> {
    let status = ctx.cr.status.clone().unwrap_or_default();
    let Some(name) = status.baseline_name.clone() else {
        return Ok(());
    };
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), ctx.ns);
    let current = ctx.read::<Deployment>(&name).await?;
    let Step::Batch { changed, .. } = step else {
        if current.is_some() {
            ctx.fence.check()?;
            super::delete_in_background(&api, &name).await?;
        }
        return Ok(());
    };
    let Some(stable) = status.stable_template.as_ref() else {
        return Ok(());
    };
    let want = wanted(*changed);
    let t = template(ctx, stable);
    match current {
        Some(d) => {
            let (spec, ..) = counts(&d);
            let now = super::template_of(&d.spec.as_ref().map(|s| &s.template))?;
            if spec != want || !same_template(&now, &t) {
                ctx.fence.check()?;
                api.patch(
                    &name,
                    &crate::api::patch_params(crate::api::MANAGER_ROLLOUT),
                    &Patch::Json::<()>(serde_json::from_value(crate::cache::fenced_json(
                        &d,
                        json!([
                            {"op": "replace", "path": "/spec/replicas", "value": want},
                            {"op": "replace", "path": "/spec/template", "value": t},
                        ]),
                    ))?),
                )
                .await?;
            }
        }
        None => {
            let Some(target) = ctx
                .read_existing::<Deployment>(&ctx.cr.spec.target.name)
                .await?
            else {
                return Ok(());
            };
            let id = (name.as_str(), LABEL_BASELINE);
            super::deployment::create_owned(ctx, &api, &target, id, want, &t).await?;
        }
    }
    Ok(())
}

/// Remove the baseline (a kept change's canary outlives it; its baseline has no use left).
pub async fn remove(ctx: &Ctx<'_>) -> Result<(), Error> {
    ensure(ctx, &Step::Restore).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_baseline_matches_the_canary_up_to_the_cap() {
        assert_eq!(wanted(1), 1);
        assert_eq!(wanted(3), 3);
        assert_eq!(wanted(MAX_BASELINE_PODS), MAX_BASELINE_PODS);
        assert_eq!(wanted(40), MAX_BASELINE_PODS);
    }
}
