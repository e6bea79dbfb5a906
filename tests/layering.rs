//! The modules' arrows point one way: the shared vocabulary (`workload`, `fence`, `detect`,
//! `util`) imports none of the layers above it, and the strategies (`rollout`) never import the
//! decision (`controller`), which drives them. Checked on the source, so a new `use` that closes
//! a circle fails here.

use std::path::Path;

/// Every `crate::<module>` path a module's source names.
fn imports(module: &str) -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let single = root.join(format!("{module}.rs"));
    if single.exists() {
        files.push(single);
    }
    if let Ok(dir) = std::fs::read_dir(root.join(module)) {
        files.extend(
            dir.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "rs")),
        );
    }
    assert!(!files.is_empty(), "no source for module {module}");
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, _) in text.match_indices("crate::") {
            let name: String = text[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.push((f.display().to_string(), name));
        }
    }
    out
}

fn assert_not_importing(module: &str, above: &[&str]) {
    let bad: Vec<String> = imports(module)
        .into_iter()
        .filter(|(_, m)| above.contains(&m.as_str()))
        .map(|(f, m)| format!("{f} uses crate::{m}"))
        .collect();
    assert!(
        bad.is_empty(),
        "{module} must not import {above:?}:\n{}",
        bad.join("\n")
    );
}

#[test]
fn rollout_does_not_import_the_controller() {
    assert_not_importing("rollout", &["controller", "cli", "dashboard", "guard"]);
}

#[test]
fn the_shared_vocabulary_imports_no_layer_above_it() {
    let above = [
        "controller",
        "rollout",
        "analysis",
        "cli",
        "dashboard",
        "guard",
        "notify",
    ];
    for m in ["workload", "fence", "detect", "util"] {
        assert_not_importing(m, &above);
    }
}

#[test]
fn the_analysis_does_not_import_the_command_line() {
    assert_not_importing("analysis", &["cli", "dashboard"]);
}

#[test]
fn the_dashboard_does_not_import_the_command_line() {
    // `kubectl graygate dashboard` serves the dashboard; the arrow points from cli to it only.
    assert_not_importing("dashboard", &["cli"]);
}
