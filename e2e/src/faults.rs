//! Fault injection knobs, changeable while a test runs.
//!
//! Two kinds of fault: a share of all calls failed (spread over the call sequence by a hash of
//! the call's number and a seed, so that two runs with different seeds fail different calls),
//! and one-shot faults armed on chosen requests (the first identity look-up, the first Lease
//! read, the first list of a cache), which fail the next matching calls and then disarm.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Knobs shared by the API server and the harness.
#[derive(Default, Debug)]
pub struct Faults {
    error_rate_ppm: AtomicU64,
    latency_ms: AtomicU64,
    watch_drop_ms: AtomicU64,
    counter: AtomicU64,
    seed: AtomicU64,
    one_shot: Mutex<Vec<OneShot>>,
}

/// Which requests a one-shot fault fails.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matcher {
    /// HTTP method (`GET`, `POST`, …).
    pub method: &'static str,
    /// A part of the path (`/selfsubjectreviews`, `/leases/graygate-leader`).
    pub path: String,
    /// `Some(false)`: lists and reads only (not watches); `Some(true)`: watches only.
    pub watch: Option<bool>,
}

impl Matcher {
    /// `method` requests whose path contains `path`, watches or not.
    pub fn new(method: &'static str, path: impl Into<String>) -> Matcher {
        Matcher {
            method,
            path: path.into(),
            watch: None,
        }
    }

    /// The same, but only requests that are not watches (a list or a get).
    pub fn not_watching(mut self) -> Matcher {
        self.watch = Some(false);
        self
    }

    fn matches(&self, method: &str, path: &str, watching: bool) -> bool {
        self.method.eq_ignore_ascii_case(method)
            && path.contains(&self.path)
            && self.watch.is_none_or(|w| w == watching)
    }
}

#[derive(Debug)]
struct OneShot {
    matcher: Matcher,
    remaining: u32,
    code: u16,
}

/// What to do with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injected {
    /// Serve it.
    None,
    /// Fail it with this status code (500, 429 or 503; the last two with Retry-After).
    Fail(u16),
}

/// SplitMix64: one well-mixed 64-bit value per input (Steele, Lea and Flood 2014).
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Faults {
    /// Share of API calls that fail (0.0–1.0).
    pub fn set_error_rate(&self, rate: f64) {
        self.error_rate_ppm
            .store((rate.clamp(0.0, 1.0) * 1e6) as u64, Ordering::Relaxed);
    }
    /// Which calls of the sequence the error rate fails: runs with different seeds fail
    /// different calls.
    pub fn set_seed(&self, seed: u64) {
        self.seed.store(seed, Ordering::Relaxed);
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

    /// Fail the next `times` requests that `matcher` matches with `code`, then serve them
    /// again; independent of the error rate.
    pub fn fail_next(&self, matcher: Matcher, times: u32, code: u16) {
        if let Ok(mut v) = self.one_shot.lock() {
            v.push(OneShot {
                matcher,
                remaining: times,
                code,
            });
        }
    }

    /// Forget every one-shot fault not yet spent.
    pub fn disarm(&self) {
        if let Ok(mut v) = self.one_shot.lock() {
            v.clear();
        }
    }

    /// One-shot faults armed and not yet spent.
    pub fn armed(&self) -> usize {
        self.one_shot
            .lock()
            .map(|v| v.iter().filter(|o| o.remaining > 0).count())
            .unwrap_or(0)
    }

    /// Decide the fate of the next request: a one-shot fault that matches it first, else the
    /// error rate (a fixed sequence per seed, spread evenly).
    pub fn next_for(&self, method: &str, path: &str, watching: bool) -> Injected {
        if let Ok(mut v) = self.one_shot.lock()
            && let Some(o) = v
                .iter_mut()
                .find(|o| o.remaining > 0 && o.matcher.matches(method, path, watching))
        {
            o.remaining -= 1;
            return Injected::Fail(o.code);
        }
        self.next()
    }

    /// Decide the fate of the next request by the error rate alone.
    pub fn next(&self) -> Injected {
        let ppm = self.error_rate_ppm.load(Ordering::Relaxed);
        if ppm == 0 {
            return Injected::None;
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let x = mix(n ^ mix(self.seed.load(Ordering::Relaxed)));
        if (x >> 20) % 1_000_000 < ppm {
            Injected::Fail([500, 429, 503][(x % 3) as usize])
        } else {
            Injected::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(f: &Faults, n: usize) -> Vec<usize> {
        (0..n)
            .filter(|_| f.next() != Injected::None)
            .collect::<Vec<_>>()
    }

    #[test]
    fn the_error_rate_holds_and_the_seed_moves_the_failures() {
        let sequence = |seed| {
            let f = Faults::default();
            f.set_error_rate(0.10);
            f.set_seed(seed);
            (0..20_000)
                .map(|_| f.next() != Injected::None)
                .collect::<Vec<bool>>()
        };
        let a = sequence(1);
        let b = sequence(2);
        let share = a.iter().filter(|x| **x).count() as f64 / a.len() as f64;
        assert!((0.09..0.11).contains(&share), "share {share}");
        assert_eq!(a, sequence(1), "a seed replays its sequence");
        let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
        assert!(same < 19_000, "two seeds fail other calls ({same} alike)");
        let f = Faults::default();
        assert!(failed(&f, 100).is_empty(), "no rate, no fault");
    }

    #[test]
    fn a_one_shot_fault_fails_only_its_requests_and_only_so_often() {
        let f = Faults::default();
        f.fail_next(
            Matcher::new("GET", "/apis/apps/v1/replicasets").not_watching(),
            2,
            500,
        );
        let rs = "/apis/apps/v1/replicasets";
        assert_eq!(f.next_for("GET", rs, true), Injected::None, "a watch");
        assert_eq!(f.next_for("POST", rs, false), Injected::None);
        assert_eq!(f.next_for("GET", "/api/v1/pods", false), Injected::None);
        assert_eq!(f.next_for("GET", rs, false), Injected::Fail(500));
        assert_eq!(f.armed(), 1);
        assert_eq!(f.next_for("get", rs, false), Injected::Fail(500));
        assert_eq!(f.next_for("GET", rs, false), Injected::None, "spent");
        assert_eq!(f.armed(), 0);
    }
}
