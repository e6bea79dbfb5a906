//! Reading the groups' logs through the Kubernetes API (`pods/log`), bounded per pod.
//!
//! Every read asks for line timestamps. The API answers a `sinceTime` read with the *oldest*
//! bytes of the window and stops at `limitBytes`, so a pod that wrote more than the limit is read
//! from the window's start up to some line in the middle: its watched time is what was read —
//! from the window's start (or the pod's readiness) to the last whole line — never the whole
//! window. The rates compared are then counts over the time they really cover, and the evidence
//! says which reads were cut.

use super::detect::LogGroup;
use crate::api::{Finding, LogAnalysisSpec};
use crate::rollout::Groups;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::LogParams;

/// Default bytes read per pod and request.
pub const DEFAULT_MAX_BYTES: i64 = 1024 * 1024;
/// Default pods read per group.
pub const DEFAULT_MAX_PODS: u32 = 5;

/// The change group, the control group (same window) and the control pods before the change.
pub struct GroupLogs {
    /// Change pods, since the window start.
    pub change: LogGroup,
    /// A sample of control pods, since the window start.
    pub control: LogGroup,
    /// The same control pods, in the hour before the change started.
    pub before: LogGroup,
    /// One finding per group whose reads the byte limit cut (shown, not judged).
    pub cuts: Vec<Finding>,
}

/// One pod's log as read with timestamps, over the window `[start, end)`.
#[derive(Clone, Debug, PartialEq)]
pub struct PodRead {
    /// Its lines, without their timestamps, written in the window.
    pub lines: Vec<String>,
    /// When each line was written, in seconds since `start`.
    pub at: Vec<f64>,
    /// Seconds of the window the lines cover: to `end`, or to the last whole line read when the
    /// byte limit cut the read.
    pub seconds: f64,
    /// Seconds of the window asked for.
    pub window: f64,
    /// Whether the byte limit cut the read.
    pub cut: bool,
    /// Bytes the API returned.
    pub bytes: usize,
}

/// A read's text (each line prefixed by its RFC 3339 timestamp, as `timestamps=true` gives it)
/// over `[start, end)`, with the byte `limit` it was read with. A read that reached the limit was
/// cut: its last, possibly partial line is dropped unless it ends with a newline, and its window
/// ends at the last line kept. Lines without a timestamp keep the time of the line before them;
/// lines at or after `end` are dropped.
pub fn parse_read(text: &str, limit: Option<usize>, start: Timestamp, end: Timestamp) -> PodRead {
    let cut = limit.is_some_and(|l| text.len() >= l);
    let mut body = text;
    if cut && !text.ends_with('\n') {
        body = text.rfind('\n').map_or("", |i| &text[..=i]);
    }
    let secs = |t: Timestamp| (t.as_millisecond() - start.as_millisecond()) as f64 / 1000.0;
    let mut lines = Vec::new();
    let mut at = Vec::new();
    let mut last: Option<Timestamp> = None;
    for raw in body.lines() {
        let (t, line) = match raw.split_once(' ') {
            Some((ts, rest)) => match ts.parse::<Timestamp>() {
                Ok(t) => (Some(t), rest),
                Err(_) => (last, raw),
            },
            None => match raw.parse::<Timestamp>() {
                Ok(t) => (Some(t), ""),
                Err(_) => (last, raw),
            },
        };
        last = t.or(last);
        let t = t.unwrap_or(start);
        if t >= end {
            continue;
        }
        lines.push(line.to_string());
        at.push(secs(t).max(0.0));
    }
    let window = secs(end).max(0.0);
    // A cut read covers the window up to its last line; a whole one, all of it.
    let seconds = match last.filter(|_| cut) {
        Some(t) => secs(t.min(end)).clamp(0.0, window),
        None if cut => 0.0,
        None => window,
    };
    PodRead {
        lines,
        at,
        seconds,
        window,
        cut,
        bytes: text.len(),
    }
}

impl PodRead {
    /// Put this read into `g` as pod `pod`: its lines and watched time, and its line times when
    /// `with_times` (the reference before the change, for the dispersion).
    pub fn put(self, g: &mut LogGroup, pod: &str, with_times: bool) {
        g.seconds.insert(pod.to_string(), self.seconds);
        if with_times {
            g.at.insert(pod.to_string(), self.at);
        }
        g.pods.insert(pod.to_string(), self.lines);
    }
}

/// A log file whose lines carry their times (as `kubectl logs --timestamps` writes them): its
/// lines, their times, and as watched time the span from its first line to its last. `None` when
/// its first line has no RFC 3339 timestamp, or the span is empty; such a file counts as one
/// unit of time, like every other untimed file.
pub fn timed_file(text: &str) -> Option<PodRead> {
    let stamp = |l: &str| {
        l.split_once(' ')
            .map_or(l, |(ts, _)| ts)
            .parse::<Timestamp>()
            .ok()
    };
    let first = stamp(text.lines().find(|l| !l.trim().is_empty())?)?;
    let last = text.lines().filter_map(stamp).max()?;
    let end = last + jiff::SignedDuration::from_millis(1);
    let mut r = parse_read(text, None, first, end);
    r.seconds = (last.as_millisecond() - first.as_millisecond()) as f64 / 1000.0;
    (r.seconds > 0.0).then_some(r)
}

/// What the byte limit cut in one group's reads, for its evidence.
#[derive(Default)]
struct Cuts {
    pods: usize,
    cut: usize,
    bytes: usize,
    read: f64,
    window: f64,
}

impl Cuts {
    fn add(&mut self, r: &PodRead) {
        self.pods += 1;
        if r.cut {
            self.cut += 1;
            self.bytes += r.bytes;
            self.read += r.seconds;
            self.window += r.window;
        }
    }

    /// The finding that says what a cut cost this group, if any read was cut.
    fn finding(&self, group: &str, what: &str, limit: i64) -> Option<Finding> {
        if self.cut == 0 {
            return None;
        }
        let mib = |b: f64| format!("{:.2} MiB", b / (1024.0 * 1024.0));
        let minutes = |s: f64| {
            if s < 120.0 {
                format!("{s:.0} s")
            } else {
                format!("{:.1} min", s / 60.0)
            }
        };
        // What the pods wrote in the whole window, had they kept the rate of what was read.
        let written = if self.read > 0.0 {
            format!(
                " (≈{} written at that rate)",
                mib(self.bytes as f64 * self.window / self.read)
            )
        } else {
            String::new()
        };
        // Per cut pod, so that several pods read the same way read as one.
        let per = self.cut as f64;
        let each = if self.cut > 1 { " per pod" } else { "" };
        Some(Finding {
            metric: "log reads".into(),
            detector: "byte limit".into(),
            groups: group.into(),
            outcome: None,
            explanation: format!(
                "{group} logs cut at maxBytesPerPod ({}) in {} of {} pod(s): {} read{written}, the first {} of {}{each} {what}; judged over what was read",
                mib(limit as f64),
                self.cut,
                self.pods,
                mib(self.bytes as f64),
                minutes(self.read / per),
                minutes(self.window / per),
            ),
            ..Default::default()
        })
    }
}

async fn read(
    api: &Api<Pod>,
    pod: &str,
    spec: &LogAnalysisSpec,
    since: Timestamp,
) -> Result<String, String> {
    let lp = LogParams {
        container: spec.container.clone(),
        since_time: Some(since),
        limit_bytes: Some(spec.max_bytes_per_pod.unwrap_or(DEFAULT_MAX_BYTES)),
        timestamps: true,
        ..Default::default()
    };
    api.logs(pod, &lp)
        .await
        .map_err(|e| format!("reading logs of pod {pod}: {e}"))
}

/// Read the logs of the groups for the window starting at `from`.
pub async fn fetch(
    client: &kube::Client,
    ns: &str,
    groups: &Groups,
    spec: &LogAnalysisSpec,
    from: Timestamp,
    change_started: Timestamp,
) -> Result<GroupLogs, String> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let max_pods = spec.max_pods.unwrap_or(DEFAULT_MAX_PODS) as usize;
    let limit = spec.max_bytes_per_pod.unwrap_or(DEFAULT_MAX_BYTES);
    let limit_usize = usize::try_from(limit).ok();
    let mut out = GroupLogs {
        change: LogGroup::default(),
        control: LogGroup::default(),
        before: LogGroup::default(),
        cuts: Vec::new(),
    };
    let now = Timestamp::now();
    // A pod's watched time starts at the window's start or when it became ready, if later: the
    // opportunity its log had to show a template.
    let from_ready = |p: &crate::rollout::GroupPod, start: Timestamp| {
        p.ready_since.map_or(start, |r| r.max(start))
    };
    let mut cuts = [Cuts::default(), Cuts::default(), Cuts::default()];
    // One pod's read of `[since, end)`, its watched time from `since` or its readiness.
    let window = async |p: &crate::rollout::GroupPod, since: Timestamp, end: Timestamp| {
        let text = read(&api, &p.name, spec, since).await?;
        Ok::<_, String>(parse_read(&text, limit_usize, from_ready(p, since), end))
    };
    for p in groups.change.iter().take(max_pods) {
        let r = window(p, from, now).await?;
        cuts[0].add(&r);
        r.put(&mut out.change, &p.name, false);
    }
    let before_start = change_started - jiff::SignedDuration::from_hours(1);
    for p in groups.control.iter().take(max_pods) {
        let r = window(p, from, now).await?;
        cuts[1].add(&r);
        r.put(&mut out.control, &p.name, false);
        // The hour before the change, each line's time kept: how much a template's count varies
        // from one window to the next in healthy pods.
        let r = window(p, before_start, change_started).await?;
        cuts[2].add(&r);
        r.put(&mut out.before, &p.name, true);
    }
    out.cuts = [
        ("change", "of the judged window"),
        ("control", "of the judged window"),
        ("before", "of the hour before the change"),
    ]
    .iter()
    .zip(&cuts)
    .filter_map(|((g, what), c)| c.finding(g, what, limit))
    .collect();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    /// One line a second from `from` for `n` seconds, as `timestamps=true` prints them.
    fn log(from: i64, n: i64) -> String {
        (0..n)
            .map(|i| {
                format!(
                    "{} INFO [http] GET /api/orders/{i:04} status=200\n",
                    t(from + i).strftime("%Y-%m-%dT%H:%M:%S%.9fZ")
                )
            })
            .collect()
    }

    #[test]
    fn a_whole_read_covers_its_window() {
        let text = log(0, 60);
        let r = parse_read(&text, Some(1 << 20), t(0), t(60));
        assert!(!r.cut);
        assert_eq!((r.lines.len(), r.seconds, r.window), (60, 60.0, 60.0));
        assert_eq!(r.lines[0], "INFO [http] GET /api/orders/0000 status=200");
        assert_eq!(r.at[59], 59.0);
    }

    #[test]
    fn a_cut_read_of_the_change_or_control_covers_up_to_its_last_whole_line() {
        // A pod writing a line a second for 10 minutes; the limit lets 150 whole lines and a
        // piece of the 151st through.
        let text = log(0, 600);
        let line = text.lines().next().unwrap().len() + 1;
        let limit = 150 * line + 20;
        let r = parse_read(&text[..limit], Some(limit), t(0), t(600));
        assert!(r.cut);
        assert_eq!(r.lines.len(), 150, "the partial line is dropped");
        assert_eq!(r.seconds, 149.0, "read up to the last whole line, at 149 s");
        assert_eq!(r.window, 600.0);
        // A pod that became ready 30 s into the window: its time starts there.
        let r = parse_read(
            &text[30 * line..30 * line + limit],
            Some(limit),
            t(30),
            t(600),
        );
        assert_eq!((r.seconds, r.window), (149.0, 570.0));
        // Exactly at the limit on a line's end: still cut (there was more), nothing dropped.
        let r = parse_read(&text[..150 * line], Some(150 * line), t(0), t(600));
        assert!(r.cut);
        assert_eq!((r.lines.len(), r.seconds), (150, 149.0));
    }

    #[test]
    fn a_cut_read_of_the_hour_before_covers_its_first_part_only() {
        // The hour before the change at a line a second: 3,600 lines. A limit of a fifth of
        // them reads the first 12 minutes, and the hour counts as 12 minutes, not 60.
        let text = log(-3600, 3600);
        let line = text.lines().next().unwrap().len() + 1;
        let limit = 720 * line;
        let r = parse_read(&text[..limit], Some(limit), t(-3600), t(0));
        assert_eq!((r.lines.len(), r.seconds, r.window), (720, 719.0, 3600.0));
        // Uncut, lines from the change's start on are not the reference.
        let r = parse_read(&log(-60, 90), None, t(-60), t(0));
        assert_eq!((r.lines.len(), r.seconds), (60, 60.0));
        // The evidence names the cut and what it left.
        let mut c = Cuts::default();
        c.add(&parse_read(&text[..limit], Some(limit), t(-3600), t(0)));
        c.add(&parse_read(&log(-60, 60), Some(1 << 20), t(-60), t(0)));
        let f = c
            .finding("before", "of the hour before the change", limit as i64)
            .unwrap();
        assert_eq!(f.outcome, None);
        assert!(
            f.explanation.starts_with("before logs cut at maxBytesPerPod (")
                && f.explanation.contains("in 1 of 2 pod(s)")
                && f.explanation.contains(
                    "the first 12.0 min of 60.0 min of the hour before the change; judged over what was read"
                ),
            "{}",
            f.explanation
        );
        assert!(Cuts::default().finding("change", "", 1).is_none());
    }

    #[test]
    fn a_log_file_with_line_times_is_watched_from_its_first_line_to_its_last() {
        let r = timed_file(&log(0, 90)).unwrap();
        assert_eq!((r.lines.len(), r.seconds), (90, 89.0));
        assert_eq!(r.lines[89], "INFO [http] GET /api/orders/0089 status=200");
        assert!(timed_file("INFO no time here\n").is_none());
        assert!(timed_file(&log(0, 1)).is_none(), "one line spans no time");
    }
}
