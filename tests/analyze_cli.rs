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
    // The file is named, and the position said once.
    assert!(
        err.contains("--input ") && err.contains("input.json: line 3 column"),
        "{err}"
    );
    assert_eq!(err.matches("line 3").count(), 1, "{err}");
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
    assert_eq!(rows[0].1, "GET /api/orders/<*> status=<*> duration_ms=<*>");
    let (code, _, err) = graygate(&["logs", "templates", "/nonexistent/file.log"]);
    assert_eq!(code, 3);
    assert!(err.contains("/nonexistent/file.log"), "{err}");
}

#[test]
fn log_files_with_line_times_are_judged_over_the_time_they_cover() {
    // The canary's file covers 300 s, the control's 30 s; both log one slow-upstream warning
    // and one request line a second. Per second nothing differs. Counted per file (no times),
    // the canary's 300 warnings against control's 30 — with ten times control's share of other
    // lines — would read as a 10× surge.
    let dir = tempdir();
    let log = |seconds: i64, requests_per_second: usize, timed: bool| {
        let mut out = String::new();
        for s in 0..seconds {
            let at = jiff::Timestamp::from_second(1_800_000_000 + s).unwrap();
            let stamp = if timed {
                format!("{} ", at.strftime("%Y-%m-%dT%H:%M:%S%.9fZ"))
            } else {
                String::new()
            };
            out.push_str(&format!(
                "{stamp}WARN [upstream] slow call to inventory-svc took {}ms\n",
                500 + s % 50
            ));
            for r in 0..requests_per_second {
                out.push_str(&format!("{stamp}INFO GET /api/orders/{s}{r} status=200\n"));
            }
        }
        out
    };
    let run = |timed: bool| {
        let canary = dir.join(format!("canary-{timed}.log"));
        std::fs::write(&canary, log(300, 1, timed)).unwrap();
        let control = dir.join(format!("control-{timed}.log"));
        std::fs::write(&control, log(30, 10, timed)).unwrap();
        let (code, out, err) = graygate(&[
            "analyze",
            "--logs",
            canary.to_str().unwrap(),
            "--control-logs",
            control.to_str().unwrap(),
            "--output",
            "json",
        ]);
        (code, format!("{out}{err}"))
    };
    let (code, out) = run(true);
    assert_eq!(code, 0, "timed files: no finding\n{out}");
    let (code, out) = run(false);
    assert_eq!(code, 1, "untimed files are counted per file\n{out}");
    assert!(out.contains("surge"), "{out}");
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

/// One labelled change of a workload whose young canary pods run `canary_factor` × the control's
/// latency for the whole window (control pods at 100, 104 and 96 ms, 10 one-minute samples).
fn slow_canary_case(i: usize, label: &str, canary_factor: f64, workload: bool) -> String {
    slow_canary_case_with(i, label, canary_factor, workload, "")
}

/// [`slow_canary_case`] with more fields (`extra` ends with a comma).
fn slow_canary_case_with(
    i: usize,
    label: &str,
    canary_factor: f64,
    workload: bool,
    extra: &str,
) -> String {
    let t0 = 1_700_000_000 + i as i64 * 3600;
    let series = |level: f64, wiggle: f64| {
        (0..10)
            .map(|k| {
                let v = level * (1.0 + wiggle * if k % 2 == 0 { 1.0 } else { -1.0 });
                format!("[{}, {v}]", t0 + 60 * k)
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let workload = if workload {
        r#""workload": "Deployment/jvm", "#
    } else {
        ""
    };
    format!(
        r#"{{"id": "change-{i}", "label": "{label}", {workload}{extra}"window": [{t0}, {}], "metrics": {{"latency": {{"change": {{"jvm-v{i}-a": [{}]}}, "control": {{"jvm-a": [{}], "jvm-b": [{}], "jvm-c": [{}]}}}}}}}}"#,
        t0 + 600,
        series(100.0 * canary_factor, 0.03),
        series(100.0, 0.02),
        series(104.0, 0.02),
        series(96.0, 0.02),
    )
}

#[test]
fn a_replay_with_the_workload_learns_that_its_canaries_are_always_slower() {
    // Six healthy releases whose canary runs 2.2× the control, then a bad one at 6×. graygate
    // fails the first three (nothing to learn from yet); a person marks them false alarms, so
    // they join the workload's history. The file lists them out of order: the replay goes by
    // window start.
    let cases = |workload: bool| {
        let mut lines: Vec<String> = (0..6)
            .map(|i| {
                let feedback = if i < 3 {
                    r#""feedback": "false-alarm", "#
                } else {
                    ""
                };
                slow_canary_case_with(i, "good", 2.2, workload, feedback)
            })
            .collect();
        lines.push(slow_canary_case(6, "bad", 6.0, workload));
        lines.reverse();
        analyze_latency_cases(&lines)
            .into_iter()
            .map(|r| {
                (
                    r["id"].as_str().unwrap().to_string(),
                    (
                        r["verdict"].as_str().unwrap().to_string(),
                        r["summary"].as_str().unwrap().to_string(),
                    ),
                )
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let alone = cases(false);
    for i in 0..6 {
        assert_eq!(alone[&format!("change-{i}")].0, "Fail", "{alone:?}");
    }
    let replayed = cases(true);
    for i in 0..3 {
        // Fewer than three released changes before them: judged as before.
        assert_eq!(replayed[&format!("change-{i}")].0, "Fail", "{replayed:?}");
    }
    for i in 3..6 {
        let (verdict, summary) = &replayed[&format!("change-{i}")];
        assert_eq!(verdict, "Pass", "change-{i}: {summary}");
        assert!(
            summary.contains("latency departed as the workload's released changes did (history)"),
            "{summary}"
        );
    }
    let (verdict, summary) = &replayed["change-6"];
    assert_eq!(verdict, "Fail", "the bad change still fails: {summary}");
    assert!(
        summary.contains("released changes of Deployment/jvm showed: their canary's latency ran 2.18–2.18× the control")
            && summary.contains("this one 5.94× — beyond"),
        "{summary}"
    );
}

/// `analyze --cases --output json` on `lines` with a latency spec: the results.
fn analyze_latency_cases(lines: &[String]) -> Vec<serde_json::Value> {
    let dir = tempdir();
    let spec = dir.join("spec.yaml");
    std::fs::write(
        &spec,
        "metrics:\n- {name: latency, query: 'x{pod=~\"{{pods}}\"}', direction: increase}\n",
    )
    .unwrap();
    let path = dir.join("cases.jsonl");
    std::fs::write(&path, lines.join("\n")).unwrap();
    let (code, out, err) = graygate(&[
        "analyze",
        "--spec",
        spec.to_str().unwrap(),
        "--cases",
        path.to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["results"].as_array().unwrap().clone()
}

/// `analyze --cases` on `lines` with the latency spec: per id, (verdict, historyRecords,
/// joinedHistory).
fn replay_cases(lines: &[String]) -> std::collections::BTreeMap<String, (String, u64, bool)> {
    analyze_latency_cases(lines)
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                (
                    r["verdict"].as_str().unwrap().to_string(),
                    r["historyRecords"].as_u64().unwrap(),
                    r["joinedHistory"].as_bool().unwrap(),
                ),
            )
        })
        .collect()
}

#[test]
fn the_replay_gates_history_by_verdict_and_feedback_never_by_label() {
    // Without feedback, releases graygate failed never join: nothing is learnt, every 2.2×
    // canary fails, good or not.
    let unmarked: Vec<String> = (0..5)
        .map(|i| slow_canary_case(i, "good", 2.2, true))
        .collect();
    let got = replay_cases(&unmarked);
    for i in 0..5 {
        assert_eq!(
            got[&format!("change-{i}")],
            ("Fail".to_string(), 0, false),
            "{got:?}"
        );
    }
    // Three false alarms join; then a bad change within what they showed passes, joins (its
    // label only scores), and the next case is judged with it: four records, then five.
    let mut lines: Vec<String> = (0..3)
        .map(|i| slow_canary_case_with(i, "good", 2.2, true, r#""feedback": "false-alarm", "#))
        .collect();
    lines.push(slow_canary_case(3, "bad", 2.2, true));
    lines.push(slow_canary_case(4, "good", 2.2, true));
    lines.push(slow_canary_case(5, "good", 2.2, true));
    let got = replay_cases(&lines);
    assert_eq!(got["change-2"], ("Fail".to_string(), 2, true), "{got:?}");
    assert_eq!(got["change-3"], ("Pass".to_string(), 3, true), "{got:?}");
    assert_eq!(got["change-4"], ("Pass".to_string(), 4, true), "{got:?}");
    assert_eq!(got["change-5"], ("Pass".to_string(), 5, true), "{got:?}");
    // A passed change marked real-fault does not join.
    lines[3] = slow_canary_case_with(3, "bad", 2.2, true, r#""feedback": "real-fault", "#);
    let got = replay_cases(&lines);
    assert_eq!(got["change-3"], ("Pass".to_string(), 3, false), "{got:?}");
    assert_eq!(got["change-4"].1, 3, "{got:?}");
    // A record is invisible to cases that start before its release ends: change-3 released
    // after change-4's start (each case starts an hour after the one before).
    lines[3] = slow_canary_case_with(3, "bad", 2.2, true, r#""released": 1700015000, "#);
    let got = replay_cases(&lines);
    assert_eq!(got["change-4"].1, 3, "{got:?}");
    assert_eq!(got["change-5"].1, 5, "{got:?}");
}

#[test]
fn text_logs_written_to_a_file_carry_no_colour_codes() {
    // Standard error is a pipe here, as it is for a file or a log collector.
    let (code, _, err) = graygate(&[
        "--log-format",
        "text",
        "run",
        "--kubeconfig",
        "/nonexistent/kubeconfig",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("ERROR") && err.contains("/nonexistent/kubeconfig"),
        "{err}"
    );
    assert!(!err.contains('\u{1b}'), "ANSI escape codes in {err:?}");
}
