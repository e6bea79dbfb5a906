//! Deployment targets, canary style: the target stays the control group; a canary Deployment
//! owned by the ChangeRequest runs the new template; the last batch writes the new template
//! into the target and removes the canary.

use super::{Ctx, Error, same_template, template_of};
use crate::api::LABEL_CHANGE;
use crate::cache::{fenced_json, fenced_merge};
use crate::rollout::template::{apply_spec, with_label};
use crate::util::short_hash;
use crate::workload::{Step, WorkloadObs};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Patch;
use kube::{Api, Resource, ResourceExt};
use serde_json::{Value, json};

fn counts(d: &Deployment) -> (i32, i32, i32, i32, bool) {
    let spec_replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let st = d.status.clone().unwrap_or_default();
    let caught_up = st.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0);
    (
        spec_replicas,
        st.replicas.unwrap_or(0),
        st.updated_replicas.unwrap_or(0),
        st.available_replicas
            .unwrap_or(0)
            .min(st.ready_replicas.unwrap_or(0)),
        caught_up,
    )
}

/// Observe the target (and canary) against the step the status asks for.
pub async fn observe(ctx: &Ctx<'_>, step: Option<&Step>) -> Result<Option<WorkloadObs>, Error> {
    let Some(target) = ctx
        .read_existing::<Deployment>(&ctx.cr.spec.target.name)
        .await?
    else {
        return Ok(None);
    };
    let template = template_of(&target.spec.as_ref().map(|s| &s.template))?;
    let selector = target
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default();
    let (replicas, total, updated, available, caught_up) = counts(&target);
    let healthy = caught_up && total == replicas && updated == replicas && available == replicas;
    let unhealthy_reason = if healthy {
        String::new()
    } else {
        format!("{available}/{replicas} available, {updated} updated, {total} pods in total")
    };
    let status = ctx.cr.status.clone().unwrap_or_default();
    // With an autoscaler the target keeps the count it sets (the canary runs beside it) and
    // batches follow that count.
    let autoscaler = super::autoscaler(ctx).await?;
    let n_total = if autoscaler.is_some() {
        replicas
    } else {
        status.original_replicas.unwrap_or(replicas)
    };
    let stable_wanted = |changed: i32, traffic: Option<i32>| {
        if autoscaler.is_some() {
            replicas
        } else {
            super::traffic::stable_pods(n_total, changed, traffic)
        }
    };
    let canary = match &status.canary_name {
        Some(name) => ctx.read::<Deployment>(name).await?,
        None => None,
    };
    let (changed_ready, step_reached) = match step {
        None => (0, false),
        Some(Step::Batch { changed, traffic }) => match &canary {
            Some(c) => {
                let (c_spec, c_total, c_updated, c_avail, c_caught) = counts(c);
                let new_template = ctx.new_template_for(&target)?;
                let template_ok = same_template(
                    &template_of(&c.spec.as_ref().map(|s| &s.template))?,
                    &super::config::canary_template(&new_template, ctx.cr),
                );
                let stable_ok = replicas == stable_wanted(*changed, *traffic)
                    && total == replicas
                    && available == replicas
                    && caught_up;
                let canary_ok = template_ok
                    && c_caught
                    && c_spec == *changed
                    && c_total == *changed
                    && c_updated == *changed
                    && c_avail == *changed;
                (
                    if template_ok { c_avail } else { 0 },
                    canary_ok && stable_ok,
                )
            }
            None => (0, false),
        },
        Some(Step::Promote) => {
            let new_template = ctx.new_template_for(&target)?;
            let on_new = same_template(&template, &new_template);
            let ready = if on_new { updated.min(available) } else { 0 };
            (
                ready,
                on_new
                    && caught_up
                    && replicas == n_total
                    && total == n_total
                    && ready == n_total
                    && canary.is_none(),
            )
        }
        Some(Step::Restore) => {
            let stable = status
                .stable_template
                .clone()
                .unwrap_or_else(|| template.clone());
            let back = same_template(&template, &stable);
            (
                0,
                back && caught_up
                    && canary.is_none()
                    && replicas == n_total
                    && total == n_total
                    && updated == n_total
                    && available == n_total,
            )
        }
    };
    Ok(Some(WorkloadObs {
        replicas,
        healthy,
        unhealthy_reason,
        revision: short_hash(&template),
        template,
        running: None,
        selector,
        partition: None,
        changed_ready,
        step_reached,
        live_replicas: autoscaler.as_ref().map(|_| replicas),
        autoscaler,
        ..Default::default()
    }))
}

/// Bring the Deployment pair to `step`. Calls the API only where the cluster differs.
pub async fn ensure(ctx: &Ctx<'_>, step: &Step) -> Result<(), Error> {
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), ctx.ns);
    let Some(target) = ctx
        .read_existing::<Deployment>(&ctx.cr.spec.target.name)
        .await?
    else {
        return Ok(());
    };
    let status = ctx.cr.status.clone().unwrap_or_default();
    let n_total = status.original_replicas.unwrap_or(1);
    let Some(canary_name) = status.canary_name.clone() else {
        return Ok(());
    };
    let canary = ctx.read::<Deployment>(&canary_name).await?;
    let (replicas, ..) = counts(&target);
    // An autoscaler owns the target's replicas: graygate never writes them.
    let autoscaled = super::autoscaler(ctx).await?.is_some();
    let n_total = if autoscaled { replicas } else { n_total };
    let template = template_of(&target.spec.as_ref().map(|s| &s.template))?;
    match step {
        Step::Batch { changed, traffic } => {
            let new_template = ctx.new_template_for(&target)?;
            let canary_template = super::config::canary_template(
                &with_label(&new_template, LABEL_CHANGE, &ctx.cr.name_any()),
                ctx.cr,
            );
            let canary_available = match &canary {
                None => {
                    ensure_copies(ctx).await?;
                    create_owned(
                        ctx,
                        &api,
                        &target,
                        (&canary_name, LABEL_CHANGE),
                        *changed,
                        &canary_template,
                    )
                    .await?;
                    0
                }
                Some(c) => {
                    let (c_spec, _, _, c_avail, _) = counts(c);
                    let current = template_of(&c.spec.as_ref().map(|s| &s.template))?;
                    let same = same_template(&current, &canary_template);
                    if !same {
                        ensure_copies(ctx).await?;
                    }
                    if c_spec != *changed || !same {
                        let patch = fenced_json(
                            c,
                            json!([
                                {"op": "replace", "path": "/spec/replicas", "value": changed},
                                {"op": "replace", "path": "/spec/template", "value": canary_template},
                            ]),
                        );
                        ctx.fence.check()?;
                        api.patch(
                            &canary_name,
                            &crate::api::patch_params(crate::api::MANAGER_ROLLOUT),
                            &Patch::Json::<()>(serde_json::from_value(patch)?),
                        )
                        .await?;
                    }
                    c_avail
                }
            };
            // Shrink the stable side only once the canary carries its share, so capacity never dips.
            // With a traffic share the stable side keeps the pods its share of the requests needs.
            let stable_wanted = super::traffic::stable_pods(n_total, *changed, *traffic);
            if !autoscaled && canary_available >= *changed && replicas != stable_wanted {
                ctx.fence.check()?;
                scale(&api, &target, stable_wanted).await?;
            }
        }
        Step::Promote => {
            // Two writes, never one: the new template first, at the stable side's current size
            // (a rolling update only ever scales the old ReplicaSet down), then, once every
            // stable pod runs the new template, the full size. Writing both at once is a
            // scaling event to the Deployment controller, which grows the old ReplicaSet before
            // it creates the new one: old-version pods would come back after the change passed.
            // The verified canary pods keep serving until the target carries everything.
            let new_template = ctx.new_template_for(&target)?;
            let (_, total, updated, available, caught_up) = counts(&target);
            let rolled =
                caught_up && total == replicas && updated == replicas && available == replicas;
            if !same_template(&template, &new_template) {
                // The objects get the contents the canary ran before any pod restarts onto them.
                if !ctx.cr.spec.config.is_empty() {
                    super::config::promote(ctx).await?;
                }
                write_template(ctx, &api, &target, &new_template, "promotion").await?;
            } else if replicas != n_total {
                if rolled {
                    ctx.fence.check()?;
                    scale(&api, &target, n_total).await?;
                }
            } else if rolled && canary.is_some() {
                super::config::remove_copies(ctx).await?;
                ctx.fence.check()?;
                super::delete_in_background(&api, &canary_name).await?;
            }
        }
        Step::Restore => {
            // A config change: objects graygate gave new contents get their old ones back, and
            // the copies go before the canary (a change that has ended is not looked at again).
            if !ctx.cr.spec.config.is_empty() {
                super::config::restore(ctx).await?;
                super::config::remove_copies(ctx).await?;
            }
            if canary.is_some() {
                ctx.fence.check()?;
                super::delete_in_background(&api, &canary_name).await?;
            }
            let stable = status
                .stable_template
                .clone()
                .unwrap_or_else(|| template.clone());
            // The same order as a promotion, for the same reason: the template, then the size
            // once no pod of another template is left to grow.
            let (_, total, updated, _, caught_up) = counts(&target);
            if !same_template(&template, &stable) {
                write_template(ctx, &api, &target, &stable, "rollback").await?;
            } else if replicas != n_total && caught_up && updated == total {
                ctx.fence.check()?;
                scale(&api, &target, n_total).await?;
            }
        }
    }
    Ok(())
}

/// A config change's canary starts from graygate's copies of the new contents: made before the
/// canary's template names them, so a canary already on its template has them (no read per
/// reconcile).
async fn ensure_copies(ctx: &Ctx<'_>) -> Result<(), Error> {
    if ctx.cr.spec.config.is_empty() {
        return Ok(());
    }
    super::config::ensure_copies(ctx).await
}

/// Write `template` into the target (only the version it was read at), and check that it took.
async fn write_template(
    ctx: &Ctx<'_>,
    api: &Api<Deployment>,
    target: &Deployment,
    template: &Value,
    what: &str,
) -> Result<(), Error> {
    let patch = fenced_json(
        target,
        json!([{"op": "replace", "path": "/spec/template", "value": template}]),
    );
    ctx.fence.check()?;
    let got = api
        .patch(
            &target.name_any(),
            &crate::api::patch_params(crate::api::MANAGER_ROLLOUT),
            &Patch::Json::<()>(serde_json::from_value(patch)?),
        )
        .await?;
    super::check_not_held(what, target, &got, false)
}

async fn scale(api: &Api<Deployment>, d: &Deployment, replicas: i32) -> Result<(), Error> {
    let got = api
        .patch_scale(
            &d.name_any(),
            &crate::api::patch_params(crate::api::MANAGER_ROLLOUT),
            &Patch::Merge(fenced_merge(d, json!({"spec": {"replicas": replicas}}))),
        )
        .await?;
    let now = got.spec.and_then(|s| s.replicas);
    if now != Some(replicas) {
        return Err(Error::NotTaken(format!(
            "graygate scaled Deployment/{} to {replicas} and it came back at {}: something undoes graygate's writes (an admission webhook?)",
            d.name_any(),
            now.unwrap_or(0)
        )));
    }
    Ok(())
}

/// Create a Deployment `name` owned by the ChangeRequest (the canary, or a fresh baseline) beside
/// `target`: its selector is the target's plus `label` = the change's name, which `template`
/// carries too.
pub(super) async fn create_owned(
    ctx: &Ctx<'_>,
    api: &Api<Deployment>,
    target: &Deployment,
    (name, label): (&str, &str),
    replicas: i32,
    template: &Value,
) -> Result<(), Error> {
    let change = ctx.cr.name_any();
    let mut match_labels = target
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default();
    match_labels.insert(label.to_string(), change.clone());
    let owner = ctx.cr.controller_owner_ref(&()).ok_or(Error::NoNamespace)?;
    let strategy = target.spec.as_ref().and_then(|s| s.strategy.clone());
    let canary = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": ctx.ns,
            "labels": {label: change, "app.kubernetes.io/managed-by": "graygate"},
            "ownerReferences": [owner],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": match_labels},
            "template": template,
            "strategy": strategy,
        }
    });
    let canary: Deployment = serde_json::from_value(canary)?;
    ctx.fence.check()?;
    match api
        .create(
            &crate::api::post_params(crate::api::MANAGER_ROLLOUT),
            &canary,
        )
        .await
    {
        Ok(_) => Ok(()),
        // Created by an earlier reconcile whose status write was lost: the next look adopts it.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Detach the canary from the ChangeRequest so deleting the ChangeRequest leaves it running.
pub async fn orphan(ctx: &Ctx<'_>) -> Result<(), Error> {
    let status = ctx.cr.status.clone().unwrap_or_default();
    let Some(name) = status.canary_name else {
        return Ok(());
    };
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), ctx.ns);
    if api.get_opt(&name).await?.is_some() {
        ctx.fence.check()?;
        api.patch(
            &name,
            &crate::api::patch_params(crate::api::MANAGER_ROLLOUT),
            &Patch::Merge(json!({"metadata": {"ownerReferences": null}})),
        )
        .await?;
    }
    Ok(())
}

impl Ctx<'_> {
    /// The new template: applied to the recorded stable template, so it stays fixed after promotion.
    pub fn new_template_for(&self, target: &Deployment) -> Result<Value, Error> {
        let status = self.cr.status.clone().unwrap_or_default();
        let base = match status.stable_template {
            Some(t) => t,
            None => template_of(&target.spec.as_ref().map(|s| &s.template))?,
        };
        let selector = target
            .spec
            .as_ref()
            .and_then(|s| s.selector.match_labels.clone())
            .unwrap_or_default();
        self.new_template(&base, &selector)
    }

    /// The change applied to `base`.
    pub fn new_template(
        &self,
        base: &Value,
        selector: &std::collections::BTreeMap<String, String>,
    ) -> Result<Value, Error> {
        apply_spec(base, &self.cr.spec, selector).map_err(|e| Error::Spec(e.to_string()))
    }
}
