//! The applications inside simulated pods: each serves Prometheus metrics and writes logs,
//! behaving as the profile named by its image tag says.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal, Normal, Poisson};
use serde::Deserialize;
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Latency distribution of one profile.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Latency {
    /// Median request duration.
    pub median_ms: f64,
    /// Log-normal shape.
    pub sigma: f64,
}

/// A normal distribution given by mean and standard deviation.
#[derive(Clone, Debug, Deserialize)]
pub struct MeanSd {
    /// Mean.
    pub mean: f64,
    /// Standard deviation.
    pub sd: f64,
}

/// Log behaviour of one profile.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogProfile {
    /// Share of requests that log the slow-upstream WARN line.
    pub warn_rate: f64,
    /// Share of requests that fail with a stack trace healthy versions never write.
    pub exception_rate: f64,
}

/// How a young pod differs (JIT warm-up, cold caches): slower for its first seconds.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Young {
    /// For how long after the container starts.
    pub seconds: f64,
    /// Latency multiplier meanwhile.
    pub latency_factor: f64,
}

/// A behaviour, selected by an image tag.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    /// Name, which is also the image tag selecting it.
    pub name: String,
    /// One line for people.
    #[serde(default)]
    pub description: String,
    /// Mean requests per second (Poisson).
    pub requests_per_second: f64,
    /// Share of requests answered with a 500.
    pub error_rate: f64,
    /// Latency.
    pub latency: Latency,
    /// CPU use in cores.
    pub cpu_cores: MeanSd,
    /// Memory in MiB.
    pub memory_mb: MeanSd,
    /// Multiplicative noise on the traffic rate per tick (0 = none), mean-preserving.
    #[serde(default)]
    pub jitter: f64,
    /// Whether the container ever becomes Ready.
    pub ready: bool,
    /// Logging.
    pub logs: LogProfile,
    /// Slower while young, when set.
    #[serde(default)]
    pub young: Option<Young>,
}

/// Load every `*.yaml` profile in a folder.
pub fn load_profiles(dir: &Path) -> anyhow::Result<BTreeMap<String, Arc<Profile>>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        let p: Profile =
            serde_yaml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        out.insert(p.name.clone(), Arc::new(p));
    }
    anyhow::ensure!(
        out.contains_key("healthy"),
        "{}: a healthy profile is required",
        dir.display()
    );
    Ok(out)
}

/// The profile an image selects: its tag, or the part of the tag after the last `-`.
pub fn profile_name_for_image(image: &str, known: &BTreeMap<String, Arc<Profile>>) -> String {
    let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");
    if known.contains_key(tag) {
        return tag.to_string();
    }
    for (i, _) in tag.match_indices('-') {
        let suffix = &tag[i + 1..];
        if known.contains_key(suffix) {
            return suffix.to_string();
        }
    }
    "healthy".to_string()
}

/// The shared daily rhythm, compressed so tests can see it.
#[derive(Clone, Copy, Debug)]
pub struct Diurnal {
    /// Relative amplitude of the traffic wave (0.3 = ±30%).
    pub amplitude: f64,
    /// Period in seconds.
    pub period_secs: f64,
}

const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const MAX_LOG_LINES: usize = 20_000;

struct PodApp {
    container: String,
    profile: Arc<Profile>,
    ok: u64,
    errors: u64,
    buckets: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
    cpu_seconds: f64,
    cpu_now: f64,
    memory: f64,
    restarts: u64,
    logs: VecDeque<(jiff::Timestamp, String)>,
    rng: StdRng,
    seq: u64,
    started: std::time::Instant,
    /// Requests a second sent to it by the stand-in data plane, when a route reaches it;
    /// otherwise it serves its profile's own rate.
    routed_rps: Option<f64>,
}

/// Every running simulated application.
pub struct Apps {
    profiles: BTreeMap<String, Arc<Profile>>,
    pods: Mutex<BTreeMap<(String, String), PodApp>>,
    diurnal: Diurnal,
    seed: u64,
}

impl Apps {
    /// Applications with these profiles.
    pub fn new(profiles: BTreeMap<String, Arc<Profile>>, diurnal: Diurnal, seed: u64) -> Self {
        Apps {
            profiles,
            pods: Mutex::new(BTreeMap::new()),
            diurnal,
            seed,
        }
    }

    /// The profiles by name.
    pub fn profiles(&self) -> &BTreeMap<String, Arc<Profile>> {
        &self.profiles
    }

    /// The profile an image selects.
    pub fn profile_for(&self, image: &str) -> Arc<Profile> {
        let name = profile_name_for_image(image, &self.profiles);
        self.profiles
            .get(&name)
            .or_else(|| self.profiles.get("healthy"))
            .cloned()
            .unwrap_or_else(|| {
                Arc::new(Profile {
                    name: "healthy".into(),
                    description: String::new(),
                    requests_per_second: 10.0,
                    error_rate: 0.0,
                    latency: Latency {
                        median_ms: 40.0,
                        sigma: 0.25,
                    },
                    cpu_cores: MeanSd {
                        mean: 0.2,
                        sd: 0.01,
                    },
                    memory_mb: MeanSd {
                        mean: 180.0,
                        sd: 3.0,
                    },
                    jitter: 0.0,
                    ready: true,
                    logs: LogProfile {
                        warn_rate: 0.02,
                        exception_rate: 0.0,
                    },
                    young: None,
                })
            })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), PodApp>> {
        match self.pods.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// A container started in a pod.
    pub fn start(&self, ns: &str, pod: &str, container: &str, image: &str) {
        self.start_with(ns, pod, container, image, None);
    }

    /// A container started in a pod, its profile chosen by its configuration (`profile`, when a
    /// profile has that name) or else by its image.
    pub fn start_with(
        &self,
        ns: &str,
        pod: &str,
        container: &str,
        image: &str,
        profile: Option<&str>,
    ) {
        let profile = profile
            .and_then(|p| self.profiles.get(p).cloned())
            .unwrap_or_else(|| self.profile_for(image));
        let mut pods = self.lock();
        let key = (ns.to_string(), pod.to_string());
        let seed = self.seed ^ fxhash(pod);
        let app = pods.entry(key).or_insert_with(|| PodApp {
            container: container.to_string(),
            profile: profile.clone(),
            ok: 0,
            errors: 0,
            buckets: [0; BUCKETS.len()],
            sum: 0.0,
            count: 0,
            cpu_seconds: 0.0,
            cpu_now: profile.cpu_cores.mean,
            memory: profile.memory_mb.mean * 1024.0 * 1024.0,
            restarts: 0,
            logs: VecDeque::new(),
            rng: StdRng::seed_from_u64(seed),
            seq: 0,
            started: std::time::Instant::now(),
            routed_rps: None,
        });
        let now = jiff::Timestamp::now();
        let line = format!(
            "{} INFO  [main] starting {} version {} (profile {})",
            fmt_ts(now),
            container,
            image,
            app.profile.name
        );
        app.logs.push_back((now, line));
    }

    /// A running application reloads its configuration and behaves as profile `name` from now
    /// on. False when it is not running or no profile has that name.
    pub fn set_profile(&self, ns: &str, pod: &str, name: &str) -> bool {
        let Some(profile) = self.profiles.get(name).cloned() else {
            return false;
        };
        let mut pods = self.lock();
        let Some(app) = pods.get_mut(&(ns.to_string(), pod.to_string())) else {
            return false;
        };
        if app.profile.name != profile.name {
            let now = jiff::Timestamp::now();
            let line = format!(
                "{} INFO  [config] configuration reloaded: profile {} (was {})",
                fmt_ts(now),
                profile.name,
                app.profile.name
            );
            app.logs.push_back((now, line));
            app.profile = profile;
        }
        true
    }

    /// The profile a running pod behaves as.
    pub fn profile_of(&self, ns: &str, pod: &str) -> Option<String> {
        self.lock()
            .get(&(ns.to_string(), pod.to_string()))
            .map(|a| a.profile.name.clone())
    }

    /// The stand-in data plane sends a pod `rps` requests a second (`None`: it serves its
    /// profile's own rate again).
    pub fn set_routed_rate(&self, ns: &str, pod: &str, rps: Option<f64>) {
        if let Some(app) = self.lock().get_mut(&(ns.to_string(), pod.to_string())) {
            app.routed_rps = rps;
        }
    }

    /// Requests a running pod has served so far (ok and errors).
    pub fn served(&self, ns: &str, pod: &str) -> Option<u64> {
        self.lock()
            .get(&(ns.to_string(), pod.to_string()))
            .map(|a| a.ok + a.errors)
    }

    /// Whether a running pod's profile ever becomes Ready.
    pub fn is_ready(&self, ns: &str, pod: &str) -> Option<bool> {
        self.lock()
            .get(&(ns.to_string(), pod.to_string()))
            .map(|a| a.profile.ready)
    }

    /// A pod is gone.
    pub fn stop(&self, ns: &str, pod: &str) {
        self.lock().remove(&(ns.to_string(), pod.to_string()));
    }

    /// Restart count of a pod's container (crash-looping profiles restart).
    pub fn restarts(&self, ns: &str, pod: &str) -> u64 {
        self.lock()
            .get(&(ns.to_string(), pod.to_string()))
            .map_or(0, |a| a.restarts)
    }

    /// Whether a pod's profile ever becomes Ready.
    pub fn is_ready_profile(&self, image: &str) -> bool {
        self.profile_for(image).ready
    }

    /// Advance every application by `dt` seconds of traffic.
    pub fn tick(&self, dt: f64) {
        let now = jiff::Timestamp::now();
        let phase = (now.as_millisecond() as f64 / 1000.0) * std::f64::consts::TAU
            / self.diurnal.period_secs.max(1.0);
        let daily = 1.0 + self.diurnal.amplitude * phase.sin();
        let mut pods = self.lock();
        for ((_, name), app) in pods.iter_mut() {
            simulate(app, name, dt, daily, now);
        }
    }

    /// The Prometheus exposition of one pod, or None when it is not running.
    pub fn metrics(&self, ns: &str, pod: &str) -> Option<String> {
        let pods = self.lock();
        let a = pods.get(&(ns.to_string(), pod.to_string()))?;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP http_requests_total Requests served, by status code."
        );
        let _ = writeln!(out, "# TYPE http_requests_total counter");
        let _ = writeln!(out, "http_requests_total{{code=\"200\"}} {}", a.ok);
        let _ = writeln!(out, "http_requests_total{{code=\"500\"}} {}", a.errors);
        let _ = writeln!(
            out,
            "# HELP http_request_duration_seconds Request duration."
        );
        let _ = writeln!(out, "# TYPE http_request_duration_seconds histogram");
        let mut cumulative = 0;
        for (i, le) in BUCKETS.iter().enumerate() {
            cumulative += a.buckets[i];
            let _ = writeln!(
                out,
                "http_request_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "http_request_duration_seconds_bucket{{le=\"+Inf\"}} {}",
            a.count
        );
        let _ = writeln!(out, "http_request_duration_seconds_sum {}", a.sum);
        let _ = writeln!(out, "http_request_duration_seconds_count {}", a.count);
        let _ = writeln!(
            out,
            "# HELP container_cpu_usage_seconds_total CPU time used."
        );
        let _ = writeln!(out, "# TYPE container_cpu_usage_seconds_total counter");
        let _ = writeln!(
            out,
            "container_cpu_usage_seconds_total{{container=\"{}\"}} {}",
            a.container, a.cpu_seconds
        );
        let _ = writeln!(
            out,
            "# HELP process_cpu_usage_cores CPU in use now, in cores."
        );
        let _ = writeln!(out, "# TYPE process_cpu_usage_cores gauge");
        let _ = writeln!(out, "process_cpu_usage_cores {}", a.cpu_now);
        let _ = writeln!(
            out,
            "# HELP container_memory_working_set_bytes Memory in use."
        );
        let _ = writeln!(out, "# TYPE container_memory_working_set_bytes gauge");
        let _ = writeln!(
            out,
            "container_memory_working_set_bytes{{container=\"{}\"}} {}",
            a.container,
            a.memory.round()
        );
        let _ = writeln!(
            out,
            "# HELP kube_pod_container_status_restarts_total Container restarts."
        );
        let _ = writeln!(
            out,
            "# TYPE kube_pod_container_status_restarts_total counter"
        );
        let _ = writeln!(
            out,
            "kube_pod_container_status_restarts_total{{container=\"{}\"}} {}",
            a.container, a.restarts
        );
        Some(out)
    }

    /// Pods whose metrics can be scraped: (namespace, pod, container).
    pub fn running(&self) -> Vec<(String, String, String)> {
        self.lock()
            .iter()
            .map(|((ns, p), a)| (ns.clone(), p.clone(), a.container.clone()))
            .collect()
    }

    /// A pod's log, filtered like `pods/log` does.
    pub fn logs(
        &self,
        ns: &str,
        pod: &str,
        since: Option<jiff::Timestamp>,
        tail: Option<usize>,
        limit_bytes: Option<usize>,
        timestamps: bool,
    ) -> String {
        let pods = self.lock();
        let Some(a) = pods.get(&(ns.to_string(), pod.to_string())) else {
            return String::new();
        };
        let selected: Vec<&(jiff::Timestamp, String)> = a
            .logs
            .iter()
            .filter(|(t, _)| since.is_none_or(|s| *t >= s))
            .collect();
        let start = tail.map_or(0, |n| selected.len().saturating_sub(n));
        let mut out = String::new();
        for (t, line) in &selected[start..] {
            if timestamps {
                out.push_str(&t.strftime("%Y-%m-%dT%H:%M:%S%.9fZ").to_string());
                out.push(' ');
            }
            out.push_str(line);
            out.push('\n');
        }
        if let Some(limit) = limit_bytes
            && out.len() > limit
        {
            let mut cut = limit;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
        }
        out
    }
}

fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn fmt_ts(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

const PATHS: [&str; 4] = ["/api/orders", "/api/cart", "/api/products", "/api/users"];
const UPSTREAMS: [&str; 3] = ["inventory-svc", "payments-svc", "pricing-svc"];

fn simulate(app: &mut PodApp, pod: &str, dt: f64, daily: f64, now: jiff::Timestamp) {
    let p = app.profile.clone();
    if !p.ready {
        // Crash loop: the process dies every few seconds and logs why.
        if app.rng.random_bool((dt / 4.0).min(1.0)) {
            app.restarts += 1;
            let line = format!(
                "{} FATAL [main] cannot load configuration: missing key db.url; exiting",
                fmt_ts(now)
            );
            push_log(app, now, line);
        }
        return;
    }
    let jitter = if p.jitter > 0.0 {
        LogNormal::new(-p.jitter * p.jitter / 2.0, p.jitter)
            .map(|d| d.sample(&mut app.rng))
            .unwrap_or(1.0)
    } else {
        1.0
    };
    let rate = app.routed_rps.unwrap_or(p.requests_per_second * daily);
    let lambda = (rate * jitter * dt).max(0.0);
    let n = if lambda > 0.0 {
        Poisson::new(lambda)
            .map(|d| d.sample(&mut app.rng) as u64)
            .unwrap_or(0)
    } else {
        0
    };
    let young = p
        .young
        .as_ref()
        .filter(|y| app.started.elapsed().as_secs_f64() < y.seconds)
        .map_or(1.0, |y| y.latency_factor);
    let median_factor = young
        * if p.jitter > 0.0 {
            jitter.powf(0.3)
        } else {
            1.0
        };
    let lat = LogNormal::new(
        (p.latency.median_ms * median_factor / 1000.0).ln(),
        p.latency.sigma,
    )
    .ok();
    for _ in 0..n {
        app.seq += 1;
        let seconds = lat.as_ref().map_or(0.04, |d| d.sample(&mut app.rng));
        let failed = app.rng.random_bool(p.error_rate.clamp(0.0, 1.0));
        let throws = app.rng.random_bool(p.logs.exception_rate.clamp(0.0, 1.0));
        if failed || throws {
            app.errors += u64::from(failed);
            app.ok += u64::from(!failed);
        } else {
            app.ok += 1;
        }
        app.count += 1;
        app.sum += seconds;
        if let Some(i) = BUCKETS.iter().position(|le| seconds <= *le) {
            app.buckets[i] += 1;
        }
        let id = app.rng.random_range(10_000..99_999);
        let path = PATHS[app.rng.random_range(0..PATHS.len())];
        let req = format!("{:08x}-{:04x}", app.rng.random::<u32>(), app.seq & 0xffff);
        let code = if failed { 500 } else { 200 };
        let line = format!(
            "{} INFO  [http] GET {path}/{id} status={code} duration_ms={} request_id={req} pod={pod}",
            fmt_ts(now),
            (seconds * 1000.0).round()
        );
        push_log(app, now, line);
        if app.rng.random_bool(p.logs.warn_rate.clamp(0.0, 1.0)) {
            let up = UPSTREAMS[app.rng.random_range(0..UPSTREAMS.len())];
            let ms = app.rng.random_range(500..2500);
            push_log(
                app,
                now,
                format!(
                    "{} WARN  [upstream] slow call to {up} took {ms}ms request_id={req}",
                    fmt_ts(now)
                ),
            );
        }
        if throws {
            push_log(
                app,
                now,
                format!(
                    "{} ERROR [orders] request failed request_id={req}",
                    fmt_ts(now)
                ),
            );
            push_log(
                app,
                now,
                format!(
                    "java.lang.IllegalStateException: inventory reservation missing for order {id}"
                ),
            );
            push_log(
                app,
                now,
                "\tat com.shop.orders.ReservationService.confirm(ReservationService.java:212)"
                    .into(),
            );
            push_log(
                app,
                now,
                "\tat com.shop.orders.OrderController.place(OrderController.java:88)".into(),
            );
        }
    }
    let cpu = Normal::new(p.cpu_cores.mean, p.cpu_cores.sd.max(1e-9))
        .map(|d| d.sample(&mut app.rng))
        .unwrap_or(p.cpu_cores.mean)
        .max(0.0);
    app.cpu_now = cpu;
    app.cpu_seconds += cpu * dt;
    let mem = Normal::new(p.memory_mb.mean, p.memory_mb.sd.max(1e-9))
        .map(|d| d.sample(&mut app.rng))
        .unwrap_or(p.memory_mb.mean)
        .max(1.0);
    app.memory = mem * 1024.0 * 1024.0;
}

fn push_log(app: &mut PodApp, t: jiff::Timestamp, line: String) {
    app.logs.push_back((t, line));
    while app.logs.len() > MAX_LOG_LINES {
        app.logs.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_tags_select_profiles() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
        let profiles = load_profiles(&dir).unwrap();
        assert_eq!(
            profile_name_for_image("shop/web:errors", &profiles),
            "errors"
        );
        assert_eq!(
            profile_name_for_image("shop/web:2.1-new-exception", &profiles),
            "new-exception"
        );
        assert_eq!(profile_name_for_image("shop/web:1.0", &profiles), "healthy");
        assert!(profiles.len() >= 7);
    }

    #[test]
    fn traffic_is_poisson_with_the_profile_rate_and_errors() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
        let apps = Apps::new(
            load_profiles(&dir).unwrap(),
            Diurnal {
                amplitude: 0.0,
                period_secs: 600.0,
            },
            7,
        );
        apps.start("ns", "p", "app", "x:errors");
        for _ in 0..400 {
            apps.tick(0.25);
        }
        let text = apps.metrics("ns", "p").unwrap();
        let get = |prefix: &str| -> f64 {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .and_then(|l| l.rsplit(' ').next())
                .unwrap()
                .parse()
                .unwrap()
        };
        let ok = get("http_requests_total{code=\"200\"}");
        let err = get("http_requests_total{code=\"500\"}");
        let total = ok + err;
        // 100 s at 20 rps: 2000 ± a few standard deviations (sqrt(2000) ≈ 45).
        assert!((1800.0..2200.0).contains(&total), "{total}");
        let share = err / total;
        assert!((0.07..0.13).contains(&share), "{share}");
        assert!(
            apps.logs("ns", "p", None, Some(5), None, false)
                .lines()
                .count()
                == 5
        );
    }
}
