//! A metric's plot as inline SVG: the band the judge held the change to, the reference, the
//! change, the long-running pods beside a fresh baseline, the workload's level before the change,
//! and the slots that counted marked.

use super::html::esc;
use crate::analysis::plot::Plot;
use crate::detect::fmt_num;
use std::fmt::Write as _;

const W: f64 = 720.0;
const H: f64 = 240.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 26.0;
const BOTTOM: f64 = 34.0;

/// Colours (also named in the legend).
const CHANGE: &str = "#d9480f";
const REFERENCE: &str = "#1c7ed6";
const BAND: &str = "#a5d8ff";
const RUNNING: &str = "#868e96";
const BACKGROUND: &str = "#2b8a3e";
const HISTORY: &str = "#ae3ec9";
const BEYOND: &str = "#fa5252";

fn clock(t: f64) -> String {
    jiff::Timestamp::from_second(t as i64)
        .map(|ts| ts.strftime("%H:%M:%S").to_string())
        .unwrap_or_default()
}

/// The plot as an `<svg>` element; `reference_name` names the reference in the legend.
pub fn render(plot: &Plot, reference_name: &str) -> String {
    let pts = &plot.points;
    if pts.is_empty() {
        return String::from("<p class=\"muted\">no samples in the judged window</p>");
    }
    let slot = plot.slot_secs.max(1.0);
    let t_min = pts.iter().map(|p| p.t).fold(f64::INFINITY, f64::min);
    let t_max = pts.iter().map(|p| p.t).fold(f64::NEG_INFINITY, f64::max) + slot;
    let mut ys: Vec<f64> = Vec::new();
    for p in pts {
        ys.push(p.change);
        ys.extend(p.reference);
        ys.extend(p.running);
        ys.extend(p.history);
        if let Some((lo, hi)) = p.band {
            ys.extend([lo, hi]);
        }
    }
    ys.extend(plot.background);
    ys.retain(|v| v.is_finite());
    let (mut y_min, mut y_max) = ys
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(*v), b.max(*v))
        });
    if !y_min.is_finite() {
        (y_min, y_max) = (0.0, 1.0);
    }
    // Values that cannot go below zero start the axis at zero when the data is near it.
    if y_min >= 0.0 && y_min < (y_max - y_min) {
        y_min = 0.0;
    }
    if (y_max - y_min).abs() < 1e-12 {
        y_max = y_min + y_min.abs().max(1.0) * 0.1;
    }
    let pad = (y_max - y_min) * 0.08;
    let (y_lo, y_hi) = (y_min - if y_min == 0.0 { 0.0 } else { pad }, y_max + pad);
    let x = |t: f64| LEFT + (t - t_min) / (t_max - t_min).max(1.0) * (W - LEFT - RIGHT);
    let y = |v: f64| TOP + (1.0 - (v - y_lo) / (y_hi - y_lo)) * (H - TOP - BOTTOM);
    let beyond = plot.beyond();
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="plot" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" data-metric="{m}" data-beyond="{beyond}" data-slots="{n}"><title>{m}: change vs {r}, {beyond} of {n} slots beyond the band</title>"#,
        m = esc(&plot.metric),
        r = esc(reference_name),
        n = pts.len(),
    );
    // Frame and y ticks.
    let _ = write!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="#fff" stroke="#ced4da"/>"##,
        W - LEFT - RIGHT,
        H - TOP - BOTTOM
    );
    for i in 0..=3 {
        let v = y_lo + (y_hi - y_lo) * f64::from(i) / 3.0;
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#f1f3f5"/><text x="{}" y="{:.1}" font-size="11" text-anchor="end" fill="#495057">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y(v) + 4.0,
            esc(&fmt_num(v)),
            yy = y(v),
        );
    }
    for (t, anchor) in [(t_min, "start"), (t_max, "end")] {
        let _ = write!(
            s,
            r##"<text x="{:.1}" y="{}" font-size="11" text-anchor="{anchor}" fill="#495057">{}</text>"##,
            x(t),
            H - BOTTOM + 16.0,
            clock(t)
        );
    }
    // Slots that counted: shaded columns.
    for p in pts.iter().filter(|p| p.beyond) {
        let _ = write!(
            s,
            r#"<rect class="beyond" x="{:.1}" y="{TOP}" width="{:.1}" height="{}" fill="{BEYOND}" fill-opacity="0.12"><title>{}: change {} beyond the band</title></rect>"#,
            x(p.t),
            (x(p.t + slot) - x(p.t)).max(1.0),
            H - TOP - BOTTOM,
            clock(p.t),
            esc(&fmt_num(p.change)),
        );
    }
    // The band, one step per slot.
    for p in pts {
        if let Some((lo, hi)) = p.band {
            let (top, bottom) = (y(hi.min(y_hi)), y(lo.max(y_lo)));
            let _ = write!(
                s,
                r#"<rect class="band" x="{:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="{BAND}" fill-opacity="0.55"/>"#,
                x(p.t),
                (x(p.t + slot) - x(p.t)).max(1.0),
                (bottom - top).max(0.5),
            );
        }
    }
    if let Some(b) = plot.background {
        let _ = write!(
            s,
            r#"<line class="background" x1="{LEFT}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="{BACKGROUND}" stroke-dasharray="2 3"/>"#,
            W - RIGHT,
            yy = y(b)
        );
    }
    let line = |s: &mut String, class: &str, colour: &str, dash: &str, vals: &[(f64, f64)]| {
        if vals.is_empty() {
            return;
        }
        let d: Vec<String> = vals
            .iter()
            .map(|(t, v)| format!("{:.1},{:.1}", x(t + slot / 2.0), y(*v)))
            .collect();
        let _ = write!(
            s,
            r#"<polyline class="{class}" fill="none" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}" points="{}"/>"#,
            d.join(" ")
        );
    };
    let reference: Vec<(f64, f64)> = pts
        .iter()
        .filter_map(|p| Some((p.t, p.reference?)))
        .collect();
    let running: Vec<(f64, f64)> = pts.iter().filter_map(|p| Some((p.t, p.running?))).collect();
    let history: Vec<(f64, f64)> = pts.iter().filter_map(|p| Some((p.t, p.history?))).collect();
    let change: Vec<(f64, f64)> = pts.iter().map(|p| (p.t, p.change)).collect();
    line(&mut s, "history", HISTORY, "2 3", &history);
    line(&mut s, "running", RUNNING, "5 4", &running);
    line(&mut s, "reference", REFERENCE, "", &reference);
    line(&mut s, "change", CHANGE, "", &change);
    for p in pts.iter().filter(|p| p.beyond) {
        let _ = write!(
            s,
            r#"<circle class="beyond-point" cx="{:.1}" cy="{:.1}" r="3.5" fill="{BEYOND}"/>"#,
            x(p.t + slot / 2.0),
            y(p.change)
        );
    }
    // Legend.
    let mut lx = LEFT;
    let mut item = |s: &mut String, colour: &str, label: &str| {
        let _ = write!(
            s,
            r##"<rect x="{lx:.1}" y="8" width="12" height="10" fill="{colour}"/><text x="{:.1}" y="17" font-size="11" fill="#212529">{}</text>"##,
            lx + 16.0,
            esc(label)
        );
        lx += 24.0 + 6.5 * label.len() as f64;
    };
    // Only what is drawn is named.
    item(&mut s, CHANGE, "change");
    if !reference.is_empty() {
        item(&mut s, REFERENCE, reference_name);
    }
    if pts.iter().any(|p| p.band.is_some()) {
        item(&mut s, BAND, "band");
    }
    if !running.is_empty() {
        item(&mut s, RUNNING, "long-running pods");
    }
    if !history.is_empty() {
        item(&mut s, HISTORY, "a day / a week earlier");
    }
    if plot.background.is_some() {
        item(&mut s, BACKGROUND, "before the change");
    }
    if beyond > 0 {
        item(&mut s, BEYOND, &format!("{beyond} slots beyond"));
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::plot::Point;
    use crate::api::Direction;

    fn plot(beyond: &[bool]) -> Plot {
        Plot {
            metric: "latency-p99 <x>".into(),
            direction: Direction::Increase,
            reference: "control",
            band_rule: String::new(),
            slot_secs: 5.0,
            points: beyond
                .iter()
                .enumerate()
                .map(|(i, b)| Point {
                    t: 1_700_000_000.0 + 5.0 * i as f64,
                    change: if *b { 0.3 } else { 0.1 },
                    reference: Some(0.1),
                    band: Some((0.075, 0.125)),
                    beyond: *b,
                    running: None,
                    history: None,
                })
                .collect(),
            background: Some(0.1),
        }
    }

    #[test]
    fn the_svg_marks_each_slot_beyond_the_band_and_escapes_names() {
        let svg = render(&plot(&[false, true, true, false]), "control");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains(r#"data-beyond="2""#), "{svg}");
        assert_eq!(svg.matches(r#"class="beyond""#).count(), 2);
        assert_eq!(svg.matches(r#"class="beyond-point""#).count(), 2);
        assert_eq!(svg.matches(r#"class="band""#).count(), 4);
        assert!(svg.contains("latency-p99 &lt;x&gt;"));
        assert!(!svg.contains("<x>"));
        assert!(svg.contains("2 slots beyond"));
    }

    #[test]
    fn every_legend_entry_is_drawn_when_the_background_is_the_reference() {
        // The last batch of a change: every pod is new, so the reference is the workload in the
        // hour before the change. The legend names it, and its level is drawn.
        use crate::analysis::judge::{GroupData, Groups, Metric, MetricData, Params};
        let series = |level: f64, from: f64, n: usize| -> Vec<(f64, f64)> {
            (0..n).map(|i| (from + i as f64 * 10.0, level)).collect()
        };
        let data = MetricData::Plain(Groups {
            change: GroupData([("n1".to_string(), series(0.1, 5000.0, 6))].into()),
            background: Some(GroupData(
                [("old".to_string(), series(0.2, 1000.0, 30))].into(),
            )),
            ..Default::default()
        });
        let m = Metric::from_spec(&crate::api::MetricSpec {
            name: "latency-p99".into(),
            query: Some("x".into()),
            ..Default::default()
        });
        let p = Params {
            slot_secs: 10.0,
            ..Params::default()
        };
        let plot = crate::analysis::plot::plot(&m, &data, &p).unwrap();
        assert_eq!(plot.reference, "background");
        let legend = |svg: &str| -> Vec<String> {
            svg.split(r##"font-size="11" fill="#212529">"##)
                .skip(1)
                .filter_map(|s| s.split("</text>").next())
                .map(str::to_string)
                .collect()
        };
        let svg = render(&plot, "before the change");
        assert_eq!(
            legend(&svg),
            ["change", "before the change", "band"],
            "{svg}"
        );
        assert!(svg.contains(r#"<polyline class="reference""#), "{svg}");
        assert!(svg.contains(r#"<rect class="band""#), "{svg}");
        // Without any reference data nothing but the change is drawn, and named.
        let mut bare = plot.clone();
        for pt in &mut bare.points {
            pt.reference = None;
            pt.band = None;
        }
        let svg = render(&bare, "before the change");
        assert!(
            legend(&svg) == ["change"] && !svg.contains("class=\"reference\""),
            "{svg}"
        );
    }

    #[test]
    fn a_flat_series_still_draws_inside_the_frame() {
        let mut p = plot(&[false, false]);
        for pt in &mut p.points {
            pt.band = None;
            pt.reference = Some(0.1);
        }
        p.background = None;
        let svg = render(&p, "control");
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
    }
}
