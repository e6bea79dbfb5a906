//! Leader election on a coordination.k8s.io Lease: only the holder reconciles.

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::ObjectMeta;
use kube::{Api, Client};
use std::time::Duration;
use tokio::sync::watch;

pub use crate::fence::Fence;

/// Settings of the leader election.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// This replica's identity (pod name).
    pub identity: String,
    /// How long a lease is valid without renewal.
    pub duration: Duration,
}

/// What one attempt found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// This replica holds the lease.
    Leader,
    /// Another replica holds a valid lease.
    Follower,
}

/// Decide whether `me` may take or keep the lease (pure, for tests).
pub fn may_hold(spec: &LeaseSpec, me: &str, now: Timestamp, default_duration: Duration) -> bool {
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder.is_empty() || holder == me {
        return true;
    }
    let secs = spec
        .lease_duration_seconds
        .map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0)))
        .unwrap_or(default_duration);
    match &spec.renew_time {
        Some(MicroTime(renewed)) => {
            let expiry = renewed
                .checked_add(jiff::SignedDuration::from_millis(
                    i64::try_from(secs.as_millis()).unwrap_or(i64::MAX),
                ))
                .unwrap_or(*renewed);
            now >= expiry
        }
        None => true,
    }
}

/// One attempt to acquire or renew. Conflicts mean another replica won this round.
///
/// `held` is the Lease as this replica last wrote it while leading: a renewal then writes it
/// again at once, with its resourceVersion as the precondition, instead of reading it first —
/// one request instead of two, so a busy API server eats less of the leader's slack. If anyone
/// else wrote the Lease since, the write is refused (409) and the attempt goes on as a
/// follower's would, from a fresh read.
pub async fn try_acquire(
    client: &Client,
    cfg: &LeaseConfig,
    held: &mut Option<Lease>,
) -> Result<Standing, kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    let secs = i32::try_from(cfg.duration.as_secs()).unwrap_or(i32::MAX);
    if let Some(mut lease) = held.clone() {
        let mut spec = lease.spec.clone().unwrap_or_default();
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        spec.lease_duration_seconds = Some(secs);
        lease.spec = Some(spec);
        match write(&api, cfg, &lease, held).await {
            Ok(standing) => return Ok(standing),
            // Written by someone else since (or by an answer this replica never saw): read it.
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => *held = None,
            Err(e) => return Err(e),
        }
    }
    let now = Timestamp::now();
    match api.get_opt(&cfg.name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(cfg.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            match api
                .create(&crate::api::post_params(crate::api::MANAGER_LEASE), &lease)
                .await
            {
                Ok(written) => {
                    *held = Some(written);
                    Ok(Standing::Leader)
                }
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Standing::Follower),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            let spec = lease.spec.clone().unwrap_or_default();
            if !may_hold(&spec, &cfg.identity, now, cfg.duration) {
                return Ok(Standing::Follower);
            }
            let taking_over = spec.holder_identity.as_deref() != Some(cfg.identity.as_str());
            let mut next = spec.clone();
            next.holder_identity = Some(cfg.identity.clone());
            next.lease_duration_seconds = Some(secs);
            next.renew_time = Some(MicroTime(now));
            if taking_over {
                next.acquire_time = Some(MicroTime(now));
                next.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
            lease.spec = Some(next);
            match write(&api, cfg, &lease, held).await {
                Ok(standing) => Ok(standing),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Standing::Follower),
                Err(e) => Err(e),
            }
        }
    }
}

/// Replace the Lease with `lease` (its resourceVersion the precondition); the written Lease is
/// kept in `held` for the next renewal.
async fn write(
    api: &Api<Lease>,
    cfg: &LeaseConfig,
    lease: &Lease,
    held: &mut Option<Lease>,
) -> Result<Standing, kube::Error> {
    let written = api
        .replace(
            &cfg.name,
            &crate::api::post_params(crate::api::MANAGER_LEASE),
            lease,
        )
        .await?;
    *held = Some(written);
    Ok(Standing::Leader)
}

/// Give the lease up on shutdown so a successor does not wait for it to expire.
pub async fn release(client: &Client, cfg: &LeaseConfig) {
    let api: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    if let Ok(Some(mut lease)) = api.get_opt(&cfg.name).await {
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() == Some(cfg.identity.as_str()) {
            spec.holder_identity = None;
            lease.spec = Some(spec);
            let _ = api
                .replace(
                    &cfg.name,
                    &crate::api::post_params(crate::api::MANAGER_LEASE),
                    &lease,
                )
                .await;
        }
    }
}

/// When to try the Lease again after an attempt sent at `sent` that ended at `now`.
///
/// Renewals are paced from when each was *sent*, every sixth of the lease duration, so a slow
/// answer does not push the next renewal later and eat the leader's slack: every write is
/// fenced, and the fence closes when no renewal sent in the last 80% of a lease duration has
/// succeeded, so a renewal slower than that slack less the pace stops the leader's writes (with
/// a third, one renewal slower than 47% of the lease did; with a sixth, it takes 63%). A leader
/// whose renewal failed tries again after half of that period instead, so a blip of the API
/// server costs several tries, not the lease: with a 15 s lease, a leader tries about eight
/// times before its lease may have expired (client-go paces its leaders alike: a 2 s retry
/// within a 10 s renew deadline of a 15 s lease).
pub fn next_attempt(
    sent: tokio::time::Instant,
    now: tokio::time::Instant,
    duration: Duration,
    leader_failed: bool,
) -> tokio::time::Instant {
    let period = (duration / 6).max(Duration::from_millis(100));
    if leader_failed {
        now + (period / 2).max(Duration::from_millis(50))
    } else {
        (sent + period).max(now)
    }
}

/// Keep trying to hold the lease; publish `true` while this replica leads.
///
/// A leader that cannot renew within the lease duration publishes `false`, and the caller stops.
pub async fn run(
    client: Client,
    cfg: LeaseConfig,
    tx: watch::Sender<bool>,
    synced: watch::Sender<bool>,
    fence: std::sync::Arc<Fence>,
) {
    let mut last_renewed: Option<tokio::time::Instant> = None;
    let mut held: Option<Lease> = None;
    loop {
        let sent = tokio::time::Instant::now();
        let mut leader_failed = false;
        match try_acquire(&client, &cfg, &mut held).await {
            Ok(Standing::Leader) => {
                last_renewed = Some(sent);
                fence.renewed(sent, cfg.duration);
                let _ = synced.send(true);
                if !*tx.borrow() {
                    tracing::info!(lease = %cfg.name, identity = %cfg.identity, "acquired leadership");
                    let _ = tx.send(true);
                }
            }
            Ok(Standing::Follower) => {
                held = None;
                fence.revoke();
                let _ = synced.send(true);
                if *tx.borrow() {
                    tracing::warn!(lease = %cfg.name, "lost leadership to another replica");
                    let _ = tx.send(false);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "lease renewal failed");
                leader_failed = *tx.borrow();
                if leader_failed && last_renewed.is_none_or(|t| t.elapsed() >= cfg.duration) {
                    held = None;
                    fence.revoke();
                    tracing::error!("could not renew the lease in time; stepping down");
                    let _ = tx.send(false);
                }
            }
        }
        let next = next_attempt(
            sent,
            tokio::time::Instant::now(),
            cfg.duration,
            leader_failed,
        );
        tokio::time::sleep_until(next).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
            ..Default::default()
        }
    }

    #[test]
    fn a_valid_lease_of_another_replica_is_respected() {
        let now = Timestamp::from_second(1_000_010).unwrap();
        assert!(!may_hold(
            &spec("other", 1_000_000),
            "me",
            now,
            Duration::from_secs(15)
        ));
        assert!(may_hold(
            &spec("me", 1_000_000),
            "me",
            now,
            Duration::from_secs(15)
        ));
    }

    #[tokio::test]
    async fn the_fence_closes_when_the_lease_may_have_expired() {
        let f = Fence::new();
        assert!(!f.allows(), "nothing before the first renewal");
        f.renewed(tokio::time::Instant::now(), Duration::from_millis(1500));
        assert!(f.allows());
        // A process frozen (SIGSTOP) past its lease wakes to a closed fence: 1.5 s less the
        // 300 ms margin.
        tokio::time::sleep(Duration::from_millis(1250)).await;
        assert!(!f.allows());
        f.renewed(tokio::time::Instant::now(), Duration::from_secs(15));
        assert!(f.allows());
        f.revoke();
        assert!(!f.allows());
        assert!(Fence::open().allows());
    }

    #[test]
    fn renewals_are_paced_from_when_they_were_sent_and_a_failed_one_is_retried_soon() {
        let t0 = tokio::time::Instant::now();
        let lease = Duration::from_secs(3);
        // A quick renewal: the next one a sixth of the lease after this one was sent.
        assert_eq!(
            next_attempt(t0, t0 + Duration::from_millis(20), lease, false),
            t0 + Duration::from_millis(500)
        );
        // A renewal that took 2 s: the next goes at once, not a further half second later.
        let slow = t0 + Duration::from_secs(2);
        assert_eq!(next_attempt(t0, slow, lease, false), slow);
        // A leader whose renewal failed tries again after half a period.
        assert_eq!(
            next_attempt(t0, slow, lease, true),
            slow + Duration::from_millis(250)
        );
        // With the default 15 s lease, a leader gets about eight tries once a renewal fails.
        let lease = Duration::from_secs(15);
        let mut at = t0 + Duration::from_secs(5);
        let mut tries = 0;
        while at < t0 + lease {
            tries += 1;
            at = next_attempt(at, at, lease, true);
        }
        assert_eq!(tries, 8);
        // The shortest lease (1 s): a twelfth of it; never under 50 ms.
        assert_eq!(
            next_attempt(t0, t0, Duration::from_secs(1), true),
            t0 + Duration::from_secs(1) / 12
        );
        assert_eq!(
            next_attempt(t0, t0, Duration::from_millis(300), true),
            t0 + Duration::from_millis(50)
        );
    }

    #[test]
    fn an_expired_or_released_lease_can_be_taken() {
        let now = Timestamp::from_second(1_000_016).unwrap();
        assert!(may_hold(
            &spec("other", 1_000_000),
            "me",
            now,
            Duration::from_secs(15)
        ));
        assert!(may_hold(
            &spec("", 1_000_015),
            "me",
            now,
            Duration::from_secs(15)
        ));
    }
}
