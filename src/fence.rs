//! The write fence: whether this replica may write now. Below both the decision (`controller`,
//! which renews it with the Lease) and the strategies (`rollout`, which check it before each
//! write), so neither imports the other for it.

use std::time::Duration;

/// A write refused because this replica may no longer hold the Lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not the leader (the Lease may have expired): write refused")]
pub struct NotLeader;

/// The write fence of one replica: writes are allowed only while the Lease this replica last
/// renewed is surely still valid, measured on the monotonic clock from *before* the renewal
/// request (a process that was frozen, paused or partitioned finds its time ran out when it
/// wakes, before anything it computed earlier reaches the API server).
#[derive(Debug)]
pub struct Fence {
    valid_until: std::sync::Mutex<Option<tokio::time::Instant>>,
    always: bool,
}

impl Fence {
    /// A fence that allows nothing until the first renewal.
    pub fn new() -> Self {
        Fence {
            valid_until: std::sync::Mutex::new(None),
            always: false,
        }
    }

    /// A fence that always allows (tests and single-writer tools).
    pub fn open() -> Self {
        Fence {
            valid_until: std::sync::Mutex::new(None),
            always: true,
        }
    }

    /// The Lease was renewed by a request sent at `sent`: writes are allowed until
    /// `sent + duration − margin`, the margin covering clock drift between replicas.
    pub fn renewed(&self, sent: tokio::time::Instant, duration: Duration) {
        let margin = (duration / 5).max(Duration::from_millis(200)).min(duration);
        if let Ok(mut v) = self.valid_until.lock() {
            *v = Some(sent + (duration - margin));
        }
    }

    /// Leadership is gone: refuse writes at once.
    pub fn revoke(&self) {
        if let Ok(mut v) = self.valid_until.lock() {
            *v = None;
        }
    }

    /// May this replica write now?
    pub fn allows(&self) -> bool {
        self.always
            || self
                .valid_until
                .lock()
                .ok()
                .and_then(|v| *v)
                .is_some_and(|until| tokio::time::Instant::now() < until)
    }

    /// Err(NotLeader) unless writes are allowed.
    pub fn check(&self) -> Result<(), NotLeader> {
        if self.allows() {
            Ok(())
        } else {
            Err(NotLeader)
        }
    }
}

impl Default for Fence {
    fn default() -> Self {
        Fence::new()
    }
}
