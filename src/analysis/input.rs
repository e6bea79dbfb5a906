//! The recorded-data input of `graygate analyze`: per metric, the series of each group.
//!
//! ```json
//! {"metrics": {
//!   "latency-p99": {"change": {"web-canary-1": [[1700000000, 0.12], …]}, "control": [[1700000000, 0.04], …]},
//!   "error-ratio": {"numerator": {"change": …, "control": …}, "denominator": {"change": …, "control": …}}
//! }}
//! ```
//! A group is one series (`[[t, v], …]`) or a map of pod → series.

use super::judge::{GroupData, Groups, MetricData};
use serde_json::Value;
use std::collections::BTreeMap;

/// Recorded data of one judgement: the metrics and, when given, the judged window.
#[derive(Clone, Debug, PartialEq)]
pub struct Recorded {
    /// Per metric, the groups' series.
    pub metrics: BTreeMap<String, MetricData>,
    /// `window: [from, to]` in Unix seconds: when the change group's pods became ready, and the end.
    pub window: Option<(f64, f64)>,
}

/// Parse the input text; errors name the field (and, for syntax errors, the line).
pub fn parse(text: &str) -> Result<BTreeMap<String, MetricData>, String> {
    parse_recorded(text).map(|r| r.metrics)
}

/// Parse the input text with its window.
pub fn parse_recorded(text: &str) -> Result<Recorded, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| json_error(&e))?;
    recorded(&v)
}

/// A JSON syntax error as `line L column C: what`, the position said once (serde_json's own
/// message ends with it again).
pub fn json_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let what = text
        .strip_suffix(&format!(" at line {} column {}", e.line(), e.column()))
        .unwrap_or(&text);
    format!("line {} column {}: {what}", e.line(), e.column())
}

/// Read one parsed input object.
pub fn recorded(v: &Value) -> Result<Recorded, String> {
    let window = match v.get("window") {
        None | Some(Value::Null) => None,
        Some(w) => {
            let pair = w
                .as_array()
                .filter(|a| a.len() == 2)
                .and_then(|a| Some((a[0].as_f64()?, a[1].as_f64()?)))
                .ok_or("window: expected [from_unix_seconds, to_unix_seconds]")?;
            Some(pair)
        }
    };
    Ok(Recorded {
        metrics: metrics(v)?,
        window,
    })
}

fn metrics(v: &Value) -> Result<BTreeMap<String, MetricData>, String> {
    let metrics = v
        .get("metrics")
        .and_then(Value::as_object)
        .ok_or("metrics: expected an object of metric name → groups")?;
    let mut out = BTreeMap::new();
    for (name, m) in metrics {
        let field = format!("metrics.{name}");
        let data = if m.get("numerator").is_some() || m.get("denominator").is_some() {
            let num = groups(
                m.get("numerator").ok_or(format!(
                    "{field}.numerator: missing (a ratio metric needs both)"
                ))?,
                &format!("{field}.numerator"),
            )?;
            let den = groups(
                m.get("denominator").ok_or(format!(
                    "{field}.denominator: missing (a ratio metric needs both)"
                ))?,
                &format!("{field}.denominator"),
            )?;
            MetricData::Ratio {
                numerator: num,
                denominator: den,
            }
        } else {
            MetricData::Plain(groups(m, &field)?)
        };
        out.insert(name.clone(), data);
    }
    Ok(out)
}

fn groups(v: &Value, field: &str) -> Result<Groups, String> {
    let obj = v.as_object().ok_or(format!(
        "{field}: expected an object with change, control, background, history, running"
    ))?;
    // `direction` is allowed beside the groups (recorded datasets carry it); the spec decides.
    for k in obj.keys() {
        if !matches!(
            k.as_str(),
            "change" | "control" | "background" | "history" | "running" | "direction"
        ) {
            return Err(format!(
                "{field}.{k}: unknown group (use change, control, background, history, running)"
            ));
        }
    }
    let get = |k: &str| -> Result<Option<GroupData>, String> {
        obj.get(k)
            .map(|g| group(g, &format!("{field}.{k}")))
            .transpose()
    };
    Ok(Groups {
        change: get("change")?.ok_or(format!("{field}.change: missing"))?,
        control: get("control")?,
        background: get("background")?,
        history: get("history")?,
        running: get("running")?,
    })
}

fn group(v: &Value, field: &str) -> Result<GroupData, String> {
    match v {
        Value::Array(_) => Ok(GroupData([(String::new(), series(v, field)?)].into())),
        Value::Object(pods) => {
            let mut out = BTreeMap::new();
            for (pod, s) in pods {
                out.insert(pod.clone(), series(s, &format!("{field}.{pod}"))?);
            }
            Ok(GroupData(out))
        }
        _ => Err(format!(
            "{field}: expected a series [[t, v], …] or a map of pod → series"
        )),
    }
}

fn series(v: &Value, field: &str) -> Result<Vec<(f64, f64)>, String> {
    let arr = v.as_array().ok_or(format!(
        "{field}: expected an array of [unix_seconds, value]"
    ))?;
    arr.iter()
        .enumerate()
        .map(|(i, s)| {
            let pair = s
                .as_array()
                .filter(|p| p.len() == 2)
                .ok_or(format!("{field}[{i}]: expected [unix_seconds, value]"))?;
            let num = |x: &Value| {
                x.as_f64()
                    .or_else(|| x.as_str().and_then(|s| s.parse().ok()))
            };
            let t =
                num(&pair[0]).ok_or(format!("{field}[{i}][0]: expected a number of seconds"))?;
            let value = num(&pair[1]).ok_or(format!(
                "{field}[{i}][1]: expected a number (or a string like \"NaN\")"
            ))?;
            Ok((t, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_syntax_error_says_its_position_once() {
        let e = parse_recorded("{\"metrics\": [1,2").unwrap_err();
        assert_eq!(e, "line 1 column 16: EOF while parsing a list");
    }

    #[test]
    fn parses_both_group_shapes_and_ratio_metrics() {
        let m = parse(
            r#"{"metrics": {
            "lat": {"change": {"a": [[1, 0.1], [2, "0.2"]]}, "control": [[1, 0.1]]},
            "err": {"numerator": {"change": [[1, 0]]}, "denominator": {"change": [[1, 5]]}}
        }}"#,
        )
        .unwrap();
        assert!(matches!(m["lat"], MetricData::Plain(_)));
        assert!(matches!(m["err"], MetricData::Ratio { .. }));
    }

    #[test]
    fn errors_name_the_field_or_line() {
        assert!(
            parse("{\n\"metrics\": [}")
                .unwrap_err()
                .starts_with("line 2")
        );
        assert_eq!(
            parse(r#"{"metrics": {"lat": {"change": [[1]]}}}"#).unwrap_err(),
            "metrics.lat.change[0]: expected [unix_seconds, value]"
        );
        assert!(
            parse(r#"{"metrics": {"lat": {"contorl": []}}}"#)
                .unwrap_err()
                .starts_with("metrics.lat.contorl: unknown group")
        );
        assert!(
            parse(r#"{"metrics": {"e": {"numerator": {"change": []}}}}"#)
                .unwrap_err()
                .contains("denominator: missing")
        );
    }
}
