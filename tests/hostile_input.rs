//! Property tests of every parser that takes input from outside: durations, change-window
//! clocks, query templating, `analyze` input and cases, AdmissionReview documents, Prometheus
//! query_range answers and the log parser. Never a panic; a pod name cannot break out of a query template. Bounded: a fixed number
//! of cases per property (proptest's default 256), inputs of bounded size.

use graygate::analysis::backtest::parse_cases;
use graygate::analysis::input::parse;
use graygate::analysis::promapi::{PromError, decode};
use graygate::analysis::template::{pods_regex, render};
use graygate::api::Duration;
use graygate::api::window::parse_clock;
use graygate::guard::webhook::respond;
use graygate::logs::brain::{Brain, Config};
use proptest::prelude::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Arbitrary JSON of bounded depth and width.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    ".{0,8}",
                    Just("request".to_string()),
                    Just("object".to_string()),
                    Just("oldObject".to_string()),
                    Just("metadata".to_string()),
                    Just("spec".to_string()),
                    Just("template".to_string()),
                    Just("change".to_string()),
                    Just("control".to_string()),
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn durations_never_panic_and_round_trip(s in ".{0,24}", n in 1u64..10_000_000) {
        let _ = s.parse::<Duration>();
        let d = Duration::from_millis(n);
        let again: Duration = d.to_string().parse().unwrap();
        prop_assert_eq!(again, d);
    }

    #[test]
    fn window_clocks_never_panic(s in ".{0,12}", h in 0u32..24, m in 0u32..60) {
        let _ = parse_clock(&s);
        prop_assert_eq!(parse_clock(&format!("{h:02}:{m:02}")), Some(h * 60 + m));
    }

    /// Whatever the pod names, the rendered selector's string ends where the template's does,
    /// and the pattern matches exactly those names.
    #[test]
    fn pod_names_cannot_break_out_of_a_query(names in prop::collection::vec(".{1,16}", 1..4), other in ".{1,16}") {
        let vars = BTreeMap::from([("pods", pods_regex(&names))]);
        let q = render(r#"up{pod=~"{{pods}}"} + 1"#, &vars).unwrap();
        // The PromQL string opened after `=~` closes at the first unescaped quote: there, and
        // only there, must `} + 1` follow.
        let body = &q["up{pod=~\"".len()..];
        let mut chars = body.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => { chars.next(); }
                '"' => { end = Some(i); break; }
                _ => {}
            }
        }
        let end = end.expect("the string closes");
        prop_assert_eq!(&body[end..], "\"} + 1");
        // PromQL unescapes the string once; RE2 (here the regex crate) then anchors the match.
        let mut pattern = String::new();
        let mut it = body[..end].chars();
        while let Some(c) = it.next() {
            if c == '\\' {
                if let Some(n) = it.next() {
                    pattern.push(n);
                }
            } else {
                pattern.push(c);
            }
        }
        let re = regex::Regex::new(&format!("^(?:{pattern})$")).unwrap();
        for n in &names {
            prop_assert!(re.is_match(n), "{n:?} not matched by {pattern}");
        }
        if !names.contains(&other) {
            prop_assert!(!re.is_match(&other), "{other:?} matched by {pattern}");
        }
    }

    #[test]
    fn templates_never_panic(t in ".{0,40}") {
        let vars = BTreeMap::from([("pods", "a".to_string()), ("namespace", "n".to_string())]);
        let _ = render(&t, &vars);
    }

    #[test]
    fn analyze_input_never_panics(text in ".{0,64}", v in json_value()) {
        let _ = parse(&text);
        let _ = parse(&v.to_string());
        let _ = parse_cases(&text);
        let _ = parse_cases(&v.to_string());
        let _ = parse_cases(&json!({"label": "bad", "metrics": v}).to_string());
    }

    /// Any document posted to the webhook gets an answer that allows the request (the webhook
    /// holds; it never refuses) and echoes the request's uid.
    #[test]
    fn admission_reviews_never_panic(v in json_value(), uid in "[a-z0-9-]{1,12}") {
        let _ = respond(&v, &[]);
        let doc = json!({"request": {"uid": uid, "operation": "UPDATE", "kind": {"kind": "Deployment"},
            "object": v.clone(), "oldObject": v}});
        let out = respond(&doc, &["me".to_string()]);
        prop_assert_eq!(&out["response"]["uid"], &json!(uid));
        prop_assert_eq!(&out["response"]["allowed"], &json!(true));
    }

    #[test]
    fn the_log_parser_never_panics(lines in prop::collection::vec(".{0,80}", 0..40)) {
        let mut m = Brain::new(Config::default());
        let ids: Vec<u32> = lines.iter().map(|l| m.add(l)).collect();
        let g = m.settle();
        for id in ids {
            let _ = g.template(g.event(id));
        }
        prop_assert!(g.events().count() <= lines.len());
    }

    #[test]
    fn prometheus_answers_never_panic(v in json_value(), raw in prop::collection::vec(any::<u8>(), 0..256), status in 100u16..600) {
        let _ = decode(status, &raw);
        let _ = decode(status, v.to_string().as_bytes());
        // A matrix of arbitrary labels and sample pairs: every series comes back, each sample
        // whose value parses as a number kept.
        let series: Vec<Value> = match &v {
            Value::Object(m) => m.iter().map(|(k, x)| json!({"metric": {"pod": k}, "values": [[1.5, x.to_string()], [2, "NaN"]]})).collect(),
            _ => vec![json!({"metric": {}, "values": [[1, v.to_string()]]})],
        };
        let body = json!({"status": "success", "data": {"resultType": "matrix", "result": series}});
        let out = decode(200, body.to_string().as_bytes());
        prop_assert!(out.is_ok(), "{:?}", out);
        let out = out.unwrap();
        prop_assert_eq!(out.len(), series.len());
        prop_assert!(out.iter().all(|s| s.samples.len() <= 2));
        // An error answer is classified, never taken for data.
        let err = json!({"status": "error", "errorType": "bad_data", "error": v.to_string()});
        prop_assert_eq!(decode(400, err.to_string().as_bytes()), Err(PromError::BadData(v.to_string())));
    }
}
