//! Batch planning: how many pods run the new template after each batch.

use crate::api::{Approval, BatchSpec, Duration, FieldError};

/// One planned batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedBatch {
    /// Pods on the new template once the batch is done.
    pub replicas: i32,
    /// Bake time once the batch's pods are ready.
    pub bake: Duration,
    /// Whether a person must approve the batch before it starts.
    pub approval: Approval,
    /// The spec batches this one stands for (more than one when rounding merged them).
    pub spec_indices: Vec<usize>,
    /// The canary's share of the requests (0–100) the batch sets, when it names one.
    pub traffic: Option<i32>,
}

/// A batch's `traffic`: `5%`, `"5"` or `5`, between 0 and 100.
pub fn traffic_share(
    v: &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString,
) -> Result<i32, String> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let n = match v {
        IntOrString::Int(n) => *n,
        IntOrString::String(s) => {
            let t = s.trim();
            t.strip_suffix('%')
                .unwrap_or(t)
                .trim()
                .parse::<i32>()
                .map_err(|_| format!("{s:?} is not a share like 5% or 5"))?
        }
    };
    if !(0..=100).contains(&n) {
        return Err(format!("{n}% is not between 0% and 100%"));
    }
    Ok(n)
}

fn plan_err(field: String, message: String) -> FieldError {
    FieldError { field, message }
}

/// Check the batch list on its own (no cluster): shape, bounds, strictly increasing sizes.
pub fn check_batches(batches: &[BatchSpec]) -> Result<(), FieldError> {
    if batches.is_empty() {
        return Err(plan_err(
            "batches".into(),
            "at least one batch is needed".into(),
        ));
    }
    let mut last_percent = 0;
    let mut last_replicas = 0;
    let mut last_traffic: Option<i32> = None;
    for (i, b) in batches.iter().enumerate() {
        let traffic = match &b.traffic {
            Some(v) => {
                Some(traffic_share(v).map_err(|m| plan_err(format!("batches[{i}].traffic"), m))?)
            }
            None => None,
        };
        let traffic_rises = matches!((last_traffic, traffic), (Some(a), Some(b)) if b > a);
        last_traffic = traffic;
        match (b.replicas, b.percent) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(plan_err(
                    format!("batches[{i}]"),
                    "set exactly one of replicas or percent".into(),
                ));
            }
            (Some(r), None) => {
                if r < 1 {
                    return Err(plan_err(
                        format!("batches[{i}].replicas"),
                        format!("{r} is below 1"),
                    ));
                }
                if r < last_replicas || (r == last_replicas && !traffic_rises) {
                    return Err(plan_err(
                        format!("batches[{i}].replicas"),
                        format!(
                            "{r} does not exceed the previous batch's {last_replicas}: sizes must strictly increase (or stay, with a larger traffic share)"
                        ),
                    ));
                }
                last_replicas = r;
            }
            (None, Some(p)) => {
                if !(1..=100).contains(&p) {
                    return Err(plan_err(
                        format!("batches[{i}].percent"),
                        format!("{p} is not between 1 and 100"),
                    ));
                }
                if p < last_percent || (p == last_percent && !traffic_rises) {
                    return Err(plan_err(
                        format!("batches[{i}].percent"),
                        format!(
                            "{p} does not exceed the previous batch's {last_percent}: sizes must strictly increase (or stay, with a larger traffic share)"
                        ),
                    ));
                }
                last_percent = p;
            }
        }
    }
    let last = batches.len() - 1;
    if let Some(t) = last_traffic
        && t != 100
    {
        return Err(plan_err(
            format!("batches[{last}].traffic"),
            format!(
                "the last batch is the promotion: every request goes to the new pods, so its traffic is 100%, not {t}%"
            ),
        ));
    }
    if let Some(p) = batches[last].percent
        && p != 100
    {
        return Err(plan_err(
            format!("batches[{last}].percent"),
            format!("the last batch must reach 100%, not {p}%"),
        ));
    }
    Ok(())
}

/// Pods a percent batch gets: rounded up, at least one, never more than the total.
pub fn pods_for_percent(percent: i32, total: i32) -> i32 {
    let wanted = (i64::from(percent) * i64::from(total) + 99) / 100;
    i32::try_from(wanted)
        .unwrap_or(total)
        .clamp(1, total.max(1))
}

/// Turn the spec's batches into pod counts for a workload of `total` replicas.
///
/// Batches that round to no more pods than the batch before are merged into it (keeping the
/// longer bake and any manual approval), so every planned batch adds at least one pod.
pub fn plan(batches: &[BatchSpec], total: i32) -> Result<Vec<PlannedBatch>, FieldError> {
    check_batches(batches)?;
    if total < 1 {
        return Err(plan_err(
            "target".into(),
            format!("the target has {total} replicas; a gray rollout needs at least one pod"),
        ));
    }
    let mut plan: Vec<PlannedBatch> = Vec::new();
    for (i, b) in batches.iter().enumerate() {
        let replicas = match b.replicas {
            Some(r) if r > total => {
                return Err(plan_err(
                    format!("batches[{i}].replicas"),
                    format!("{r} is more than the target's {total} replicas"),
                ));
            }
            Some(r) => r,
            None => pods_for_percent(b.percent.unwrap_or(100), total),
        };
        let traffic = b.traffic.as_ref().and_then(|v| traffic_share(v).ok());
        match plan.last_mut() {
            // A batch that adds no pod but a larger share of the requests stays a batch.
            Some(prev)
                if replicas <= prev.replicas
                    && !matches!((prev.traffic, traffic), (Some(a), Some(b)) if b > a) =>
            {
                prev.bake = prev.bake.max(b.bake);
                if b.approval == Approval::Manual {
                    prev.approval = Approval::Manual;
                }
                prev.spec_indices.push(i);
                if traffic.is_some() {
                    prev.traffic = prev.traffic.max(traffic);
                }
            }
            _ => plan.push(PlannedBatch {
                replicas,
                bake: b.bake,
                approval: b.approval,
                spec_indices: vec![i],
                traffic,
            }),
        }
    }
    let last = batches.len() - 1;
    if plan.last().map(|b| b.replicas) != Some(total) {
        return Err(plan_err(
            format!("batches[{last}].replicas"),
            format!(
                "the last batch reaches {} of {total} pods; it must reach 100%",
                plan.last().map(|b| b.replicas).unwrap_or(0)
            ),
        ));
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pct(p: i32) -> BatchSpec {
        BatchSpec {
            percent: Some(p),
            bake: Duration::from_secs(60),
            ..Default::default()
        }
    }
    fn abs(r: i32) -> BatchSpec {
        BatchSpec {
            replicas: Some(r),
            bake: Duration::from_secs(60),
            ..Default::default()
        }
    }
    fn sizes(p: &[PlannedBatch]) -> Vec<i32> {
        p.iter().map(|b| b.replicas).collect()
    }

    #[test]
    fn one_replica_collapses_to_one_batch() {
        let p = plan(&[pct(10), pct(50), pct(100)], 1).unwrap();
        assert_eq!(sizes(&p), vec![1]);
        assert_eq!(p[0].spec_indices, vec![0, 1, 2]);
    }

    #[test]
    fn three_replicas_at_ten_percent_gets_one_pod() {
        let p = plan(&[pct(10), pct(50), pct(100)], 3).unwrap();
        assert_eq!(sizes(&p), vec![1, 2, 3]);
        let p = plan(&[pct(10), pct(20), pct(100)], 3).unwrap();
        assert_eq!(sizes(&p), vec![1, 3]);
    }

    #[test]
    fn hundred_replicas_follow_percentages() {
        let p = plan(&[pct(1), pct(10), pct(25), pct(50), pct(100)], 100).unwrap();
        assert_eq!(sizes(&p), vec![1, 10, 25, 50, 100]);
        let p = plan(&[pct(33), pct(66), pct(100)], 100).unwrap();
        assert_eq!(sizes(&p), vec![33, 66, 100]);
    }

    #[test]
    fn percent_rounds_up_and_stays_in_bounds() {
        assert_eq!(pods_for_percent(10, 3), 1);
        assert_eq!(pods_for_percent(34, 3), 2);
        assert_eq!(pods_for_percent(1, 1000), 10);
        assert_eq!(pods_for_percent(100, 7), 7);
        assert_eq!(pods_for_percent(1, 1), 1);
    }

    #[test]
    fn merged_batch_keeps_manual_approval_and_longest_bake() {
        let mut b = pct(20);
        b.approval = Approval::Manual;
        b.bake = Duration::from_secs(600);
        let p = plan(&[pct(10), b, pct(100)], 4).unwrap();
        assert_eq!(sizes(&p), vec![1, 4]);
        assert_eq!(p[0].approval, Approval::Manual);
        assert_eq!(p[0].bake, Duration::from_secs(600));
    }

    #[test]
    fn absolute_sizes_must_fit_and_finish() {
        assert_eq!(
            sizes(&plan(&[abs(1), abs(5), abs(10)], 10).unwrap()),
            vec![1, 5, 10]
        );
        let e = plan(&[abs(1), abs(12)], 10).unwrap_err();
        assert_eq!(e.field, "batches[1].replicas");
        let e = plan(&[abs(1), abs(5)], 10).unwrap_err();
        assert_eq!(e.field, "batches[1].replicas");
        assert!(e.message.contains("100%"));
        let e = plan(&[abs(1), pct(100)], 0).unwrap_err();
        assert_eq!(e.field, "target");
    }

    #[test]
    fn static_checks_name_the_field() {
        assert_eq!(check_batches(&[]).unwrap_err().field, "batches");
        assert_eq!(
            check_batches(&[pct(50), pct(40), pct(100)])
                .unwrap_err()
                .field,
            "batches[1].percent"
        );
        assert_eq!(
            check_batches(&[pct(50)]).unwrap_err().field,
            "batches[0].percent"
        );
        assert_eq!(
            check_batches(&[pct(0), pct(100)]).unwrap_err().field,
            "batches[0].percent"
        );
        assert_eq!(
            check_batches(&[abs(0), pct(100)]).unwrap_err().field,
            "batches[0].replicas"
        );
        let both = BatchSpec {
            replicas: Some(1),
            percent: Some(1),
            ..Default::default()
        };
        assert_eq!(
            check_batches(&[both, pct(100)]).unwrap_err().field,
            "batches[0]"
        );
        assert!(check_batches(&[abs(1), pct(50), pct(100)]).is_ok());
    }
}
