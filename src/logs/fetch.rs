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
    let Some(first) = stamp(text.lines().find(|l| !l.trim().is_empty())?) else {
        return own_times(text);
    };
    let last = text.lines().filter_map(stamp).max()?;
    let end = last + jiff::SignedDuration::from_millis(1);
    let mut r = parse_read(text, None, first, end);
    r.seconds = (last.as_millisecond() - first.as_millisecond()) as f64 / 1000.0;
    (r.seconds > 0.0).then_some(r)
}

/// A file whose lines carry their own time in the program's format: each line's time (lines
/// without one take the time of the line before), the file watched from its first time to its
/// last. The lines keep their text.
fn own_times(text: &str) -> Option<PodRead> {
    let mut lines = Vec::new();
    let mut times: Vec<Option<f64>> = Vec::new();
    for l in text.lines() {
        times.push(line_time(l));
        lines.push(l.to_string());
    }
    let first = times.iter().flatten().copied().reduce(f64::min)?;
    let last = times.iter().flatten().copied().reduce(f64::max)?;
    let mut at = Vec::with_capacity(times.len());
    let mut now = first;
    for t in times {
        now = t.unwrap_or(now);
        at.push(now - first);
    }
    let seconds = last - first;
    (seconds > 0.0).then_some(PodRead {
        lines,
        at,
        seconds,
        window: seconds,
        cut: false,
        bytes: text.len(),
    })
}

/// klog's header: level letter, month, day, time of day with microseconds.
static KLOG: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
    regex::Regex::new(r"^[IWEF](\d\d)(\d\d) (\d\d:\d\d:\d\d(?:\.\d+)?)\s")
        .unwrap_or_else(|_| std::process::abort())
});
/// ISO 8601 at the start of a line, with `T` or a space, `.` or `,` before the fraction.
static ISO: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
    regex::Regex::new(r"^\[?(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d)(?:[.,](\d+))?(Z|[+-]\d\d:?\d\d)?")
        .unwrap_or_else(|_| std::process::abort())
});
/// The time field of a structured line: JSON `"ts"`, `"time"`, `"timestamp"` (a string, or
/// seconds since the epoch as zap writes them), logfmt `ts=`, `time=`.
static FIELD: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
    regex::Regex::new(
        r#"(?:"(?:ts|time|timestamp)"\s*:\s*(?:"([^"]+)"|(\d+(?:\.\d+)?))|(?:^|\s)(?:ts|time)=("?)([^\s"]+))"#,
    )
    .unwrap_or_else(|_| std::process::abort())
});

/// Seconds since the epoch, to the nanosecond.
fn epoch_seconds(t: Timestamp) -> f64 {
    t.as_millisecond() as f64 / 1000.0 + f64::from(t.subsec_nanosecond() % 1_000_000) / 1e9
}

/// Seconds of a wall-clock time written as text (RFC 3339, or ISO 8601 with a space; without an
/// offset it is taken as UTC, which changes no difference between lines of one file).
fn iso_seconds(text: &str) -> Option<f64> {
    if let Ok(t) = text.parse::<Timestamp>() {
        return Some(epoch_seconds(t));
    }
    let c = ISO.captures(text)?;
    let mut s = format!("{}T{}", &c[1], &c[2]);
    if let Some(f) = c.get(3) {
        s.push('.');
        s.push_str(f.as_str());
    }
    let civil: jiff::civil::DateTime = s.parse().ok()?;
    let t = match c.get(4).map(|m| m.as_str()) {
        None | Some("Z") => civil.to_zoned(jiff::tz::TimeZone::UTC).ok()?.timestamp(),
        Some(off) => {
            let (sign, digits) = off.split_at(1);
            let digits = digits.replace(':', "");
            let (h, m) = digits.split_at(2);
            let secs = h.parse::<i32>().ok()? * 3600 + m.parse::<i32>().ok()? * 60;
            let secs = if sign == "-" { -secs } else { secs };
            let tz = jiff::tz::TimeZone::fixed(jiff::tz::Offset::from_seconds(secs).ok()?);
            civil.to_zoned(tz).ok()?.timestamp()
        }
    };
    Some(epoch_seconds(t))
}

/// When a line says it was written, in seconds on a scale shared by the lines of one file: the
/// time field of a JSON or logfmt line, an ISO 8601 time opening the line, or klog's header
/// (which has no year: its seconds count from the start of a leap year, enough for the
/// differences within one file that does not span a new year).
pub fn line_time(line: &str) -> Option<f64> {
    if let Some(c) = KLOG.captures(line) {
        let (month, day): (i8, i8) = (c[1].parse().ok()?, c[2].parse().ok()?);
        let time: jiff::civil::Time = c[3].parse().ok()?;
        let date = jiff::civil::Date::new(2000, month, day).ok()?;
        let t = date
            .to_datetime(time)
            .to_zoned(jiff::tz::TimeZone::UTC)
            .ok()?
            .timestamp();
        return Some(epoch_seconds(t));
    }
    if let Some(c) = FIELD.captures(line) {
        if let Some(n) = c.get(2) {
            return n.as_str().parse().ok();
        }
        if let Some(v) = c.get(1).or(c.get(4)) {
            return iso_seconds(v.as_str());
        }
    }
    iso_seconds(line)
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
        assert!(timed_file("INFO no time here\nnor here\n").is_none());
        assert!(timed_file(&log(0, 1)).is_none(), "one line spans no time");
    }

    #[test]
    fn files_read_each_line_time_in_the_format_its_program_writes() {
        // klog: 10:00:00.5 to 10:01:30.25 on Dec 6, and a line without a header between.
        let klog = "I1206 10:00:00.500000       1 a.go:10] start\n  continued\nW1206 10:01:30.250000       1 a.go:20] slow\n";
        let r = timed_file(klog).unwrap();
        assert_eq!(r.lines.len(), 3);
        assert_eq!(r.lines[0], "I1206 10:00:00.500000       1 a.go:10] start");
        assert!((r.seconds - 89.75).abs() < 1e-9, "{}", r.seconds);
        assert_eq!(r.at.len(), 3);
        assert!(
            r.at[1].abs() < 1e-9 && (r.at[2] - 89.75).abs() < 1e-9,
            "{:?}",
            r.at
        );
        // ISO 8601 with a space and a comma (log4j), across midnight.
        let iso = "2026-12-06 23:59:59,900 INFO [main] x.Y: a\n2026-12-07 00:00:10,150 INFO [main] x.Y: b\n";
        assert!((timed_file(iso).unwrap().seconds - 10.25).abs() < 1e-9);
        // With offsets: 10:00 at +01:00 is 09:00 UTC, an hour before 10:00Z.
        let off = "2026-12-06T10:00:00+01:00 a\n2026-12-06T10:00:00Z b\n";
        assert!((own_times(off).unwrap().seconds - 3600.0).abs() < 1e-9);
        // zap's JSON with seconds since the epoch, and JSON/logfmt with RFC 3339 strings.
        let zap = "{\"level\":\"info\",\"ts\":1765015200.125,\"msg\":\"a\"}\n{\"level\":\"info\",\"ts\":1765015212.625,\"msg\":\"b\"}\n";
        assert!((timed_file(zap).unwrap().seconds - 12.5).abs() < 1e-6);
        let json = "{\"time\":\"2026-12-06T10:00:00.000Z\",\"msg\":\"a\"}\n{\"time\":\"2026-12-06T10:00:42.500Z\",\"msg\":\"b\"}\n";
        assert!((timed_file(json).unwrap().seconds - 42.5).abs() < 1e-9);
        let logfmt = "ts=2026-12-06T10:00:00.000Z level=info msg=a\nts=2026-12-06T10:00:07.000Z level=warn msg=b\n";
        let r = timed_file(logfmt).unwrap();
        assert!((r.seconds - 7.0).abs() < 1e-9);
        assert_eq!(r.lines[1], "ts=2026-12-06T10:00:07.000Z level=warn msg=b");
        assert_eq!(line_time("GET / 200"), None);
    }
}
