//! Fault injection knobs, changeable while a test runs.

use std::sync::atomic::{AtomicU64, Ordering};

/// Knobs shared by the API server and the harness.
#[derive(Default, Debug)]
pub struct Faults {
    error_rate_ppm: AtomicU64,
    latency_ms: AtomicU64,
    watch_drop_ms: AtomicU64,
    counter: AtomicU64,
}

/// What to do with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injected {
    /// Serve it.
    None,
    /// Fail it with this status code (500, 429 or 503; the last two with Retry-After).
    Fail(u16),
}

impl Faults {
    /// Share of API calls that fail (0.0–1.0).
    pub fn set_error_rate(&self, rate: f64) {
        self.error_rate_ppm
            .store((rate.clamp(0.0, 1.0) * 1e6) as u64, Ordering::Relaxed);
    }
    /// Added latency per API call.
    pub fn set_latency_ms(&self, ms: u64) {
        self.latency_ms.store(ms, Ordering::Relaxed);
    }
    /// Close every watch stream after this long (0 = never).
    pub fn set_watch_drop_ms(&self, ms: u64) {
        self.watch_drop_ms.store(ms, Ordering::Relaxed);
    }
    /// Added latency.
    pub fn latency_ms(&self) -> u64 {
        self.latency_ms.load(Ordering::Relaxed)
    }
    /// Watch lifetime limit.
    pub fn watch_drop_ms(&self) -> u64 {
        self.watch_drop_ms.load(Ordering::Relaxed)
    }
    /// Decide the fate of the next request (deterministic sequence, spread evenly).
    pub fn next(&self) -> Injected {
        let ppm = self.error_rate_ppm.load(Ordering::Relaxed);
        if ppm == 0 {
            return Injected::None;
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        // A multiplicative hash spreads failures without a random generator.
        let x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
        if x % 1_000_000 < ppm {
            Injected::Fail([500, 429, 503][(n % 3) as usize])
        } else {
            Injected::None
        }
    }
}
