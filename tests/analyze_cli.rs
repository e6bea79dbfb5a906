//! `graygate analyze` as a user runs it: exit codes, output formats, and errors that name the field.

use std::process::Command;

fn graygate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_graygate"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

const SPEC: &str = "examples/analyze/analysis.yaml";

/// `graygate analyze --spec SPEC --input <file holding `input`>`.
fn analyze_input(input: &str) -> (i32, String, String) {
    let path = tempdir().join("input.json");
    std::fs::write(&path, input).unwrap();
    graygate(&["analyze", "--spec", SPEC, "--input", path.to_str().unwrap()])
}

#[test]
fn a_bad_change_fails_with_exit_1_and_names_the_metric() {
    let (code, out, _) = graygate(&[
        "analyze",
        "--spec",
        SPEC,
        "--input",
        "examples/analyze/bad-change.json",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("VERDICT: Fail"), "{out}");
    assert!(
        out.contains("error-ratio") && out.contains("proportion"),
        "{out}"
    );
}

#[test]
fn a_good_change_passes_with_exit_0_and_json_output() {
    let (code, out, _) = graygate(&[
        "analyze",
        "--spec",
        SPEC,
        "--input",
        "examples/analyze/good-change.json",
        "--output",
        "json",
    ]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["verdict"], "Pass");
    let findings = v["findings"].as_array().unwrap();
    // One per metric and detector, and the check that the canary does any work.
    assert_eq!(findings.len(), 4, "{out}");
    assert!(
        findings
            .iter()
            .any(|f| f["detector"] == "idle" && f["outcome"] == "Pass"),
        "{out}"
    );
}

#[test]
fn too_little_data_is_inconclusive_with_exit_2() {
    let (code, out, _) = analyze_input(
        r#"{"metrics": {"latency-p99": {"change": [[1, 0.1], [2, 0.2]], "control": [[1, 0.1]]}}}"#,
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("Inconclusive"), "{out}");
}

#[test]
fn malformed_input_names_the_line_or_field_and_exits_3() {
    let (code, _, err) = analyze_input(
        "{\n  \"metrics\": {\n    \"latency-p99\": {\"change\": [[1, 0.1],, ]}\n  }\n}",
    );
    assert_eq!(code, 3);
    assert!(err.contains("line 3"), "{err}");
    let (code, _, err) = analyze_input(r#"{"metrics": {"latency-p99": {"change": [[1, "x"]]}}}"#);
    assert_eq!(code, 3);
    assert!(err.contains("metrics.latency-p99.change[0][1]"), "{err}");
    let (code, _, err) = analyze_input(r#"{"metrics": {"latncy": {"change": []}}}"#);
    assert_eq!(code, 3);
    assert!(
        err.contains("metrics.latncy: not a metric of the spec"),
        "{err}"
    );
}

#[test]
fn a_bad_spec_names_the_field_and_exits_3() {
    let dir = tempdir();
    let spec = dir.join("spec.yaml");
    std::fs::write(
        &spec,
        "metrics:\n- name: x\n  query: 'up{pod=~\"{{podz}}\"}'\n",
    )
    .unwrap();
    let (code, _, err) = graygate(&[
        "analyze",
        "--spec",
        spec.to_str().unwrap(),
        "--input",
        "examples/analyze/good-change.json",
    ]);
    assert_eq!(code, 3);
    assert!(
        err.contains("spec.analysis.metrics[0].query") && err.contains("{{podz}}"),
        "{err}"
    );
    let (code, _, err) = graygate(&[
        "analyze",
        "--prometheus",
        "http://127.0.0.1:9",
        "--from",
        "yesterday",
        "--to",
        "1",
        "--change-pods",
        "a",
    ]);
    assert_eq!(code, 3);
    assert!(err.contains("--from"), "{err}");
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "graygate-cli-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[test]
fn logs_templates_prints_one_template_per_line_in_order() {
    let dir = tempdir();
    let f = dir.join("app.log");
    std::fs::write(&f, "GET /api/orders/1 status=200 duration_ms=4\nWARN slow call to inventory-svc took 900ms\nGET /api/orders/22 status=500 duration_ms=17\n").unwrap();
    let (code, out, _) = graygate(&["logs", "templates", f.to_str().unwrap()]);
    assert_eq!(code, 0);
    let rows: Vec<(&str, &str)> = out.lines().map(|l| l.split_once('\t').unwrap()).collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].0, rows[2].0, "the two requests share a template");
    assert_ne!(rows[0].0, rows[1].0);
    assert_eq!(rows[0].1, "GET <*> status=<*> duration_ms=<*>");
    let (code, _, err) = graygate(&["logs", "templates", "/nonexistent/file.log"]);
    assert_eq!(code, 3);
    assert!(err.contains("/nonexistent/file.log"), "{err}");
}

#[test]
fn log_files_are_judged_the_same_way() {
    let dir = tempdir();
    let req = |pod: &str, n: usize| {
        (0..n)
            .map(|i| {
                format!(
                    "INFO GET /api/orders/{i} status=200 duration_ms={} pod={pod}\n",
                    i % 40
                )
            })
            .collect::<String>()
    };
    let control = dir.join("control.log");
    std::fs::write(&control, req("k1", 300)).unwrap();
    let good = dir.join("good.log");
    std::fs::write(&good, req("c1", 300)).unwrap();
    let bad = dir.join("bad.log");
    std::fs::write(&bad, format!("{}ERROR request failed token=abc123\njava.lang.IllegalStateException: reservation missing for order 17\n", req("c1", 300))).unwrap();
    let (code, out, _) = graygate(&[
        "analyze",
        "--logs",
        good.to_str().unwrap(),
        "--control-logs",
        control.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = graygate(&[
        "analyze",
        "--logs",
        bad.to_str().unwrap(),
        "--control-logs",
        control.to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert_eq!(code, 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let findings = v["findings"].as_array().unwrap();
    assert!(
        findings.iter().any(|f| f["detector"] == "new-template"
            && f["metric"]
                .as_str()
                .unwrap()
                .contains("IllegalStateException")),
        "{out}"
    );
    assert!(
        !out.contains("abc123"),
        "the token is masked in examples: {out}"
    );
    let (code, _, err) = graygate(&["analyze", "--logs", bad.to_str().unwrap()]);
    assert_eq!(code, 3);
    assert!(err.contains("--control-logs"), "{err}");
}

/// Two labelled changes of one metric: a canary whose error rate sits far above its control
/// pods for the whole window (bad), and one that looks like its peers (good).
fn labelled_cases() -> String {
    let series = |f: &dyn Fn(usize) -> f64| -> serde_json::Value {
        (0..10)
            .map(|i| serde_json::json!([1_700_000_000 + 60 * i as i64, f(i)]))
            .collect()
    };
    let case = |id: &str, label: &str, canary: f64| {
        serde_json::json!({
            "id": id, "label": label, "fault": if label == "bad" { "exception" } else { "" },
            "metrics": {"errors": {
                "change": {"web-v2-a": series(&|_| canary)},
                "control": {"web-v1-a": series(&|i| 0.01 + 0.001 * (i % 3) as f64),
                            "web-v1-b": series(&|i| 0.012 - 0.001 * (i % 2) as f64)}
            }}
        })
        .to_string()
    };
    format!(
        "{}\n{}\n{}\n",
        case("bad-1", "bad", 0.2),
        case("good-1", "good", 0.011),
        case("good-2", "good", 0.5)
    )
}

#[test]
fn cases_print_the_confusion_table_and_what_went_wrong() {
    let dir = tempdir();
    let spec = dir.join("spec.yaml");
    std::fs::write(
        &spec,
        "metrics:\n- name: errors\n  query: x\n  direction: increase\n",
    )
    .unwrap();
    let cases = dir.join("cases.jsonl");
    std::fs::write(&cases, labelled_cases()).unwrap();
    let args = [
        "analyze",
        "--spec",
        spec.to_str().unwrap(),
        "--cases",
        cases.to_str().unwrap(),
    ];
    let (code, out, err) = graygate(&args);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("CASES: 3 (1 bad, 2 good)"), "{out}");
    assert!(out.contains("bad changes      1/1 = 100.0%"), "{out}");
    assert!(out.contains("good changes     1/2 = 50.0%"), "{out}");
    assert!(out.contains("exception        1/1 = 100.0%"), "{out}");
    assert!(
        out.contains("good-2") && out.contains("good, failed"),
        "{out}"
    );
    assert!(!out.contains("good-1"), "{out}");
    let (code, out, _) = graygate(&[&args[..], &["--output", "json"]].concat());
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["good"]["failed"], 1);
    assert_eq!(v["results"][0]["verdict"], "Fail");
}

#[test]
fn a_bad_case_line_exits_3_naming_the_line() {
    let dir = tempdir();
    let cases = dir.join("bad.jsonl");
    let mut text = labelled_cases();
    text.push_str("{\"label\": \"bad\", \"metrics\": {\"errors\": {\"change\": [[1, 2, 3]]}}}\n");
    std::fs::write(&cases, text).unwrap();
    let (code, _, err) = graygate(&["analyze", "--cases", cases.to_str().unwrap()]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("line 4: metrics.errors.change[0]"), "{err}");
}
