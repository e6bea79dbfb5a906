//! Reading the loghub samples (../shared/data/loghub): shared by the accuracy test and the bench.
#![allow(dead_code)]

/// The eight systems.
pub const SYSTEMS: [&str; 8] = [
    "Apache",
    "BGL",
    "HDFS",
    "Hadoop",
    "Linux",
    "OpenSSH",
    "Spark",
    "Zookeeper",
];

/// Parse one CSV record (RFC 4180 quoting).
fn csv_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// (Content, EventId) of every line of a system.
pub fn load(dir: &std::path::Path, system: &str) -> Vec<(String, String)> {
    load_with_templates(dir, system)
        .into_iter()
        .map(|(c, e, _)| (c, e))
        .collect()
}

/// (Content, EventId, EventTemplate) of every line of a system.
pub fn load_with_templates(dir: &std::path::Path, system: &str) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(
        dir.join(system)
            .join(format!("{system}_2k.log_structured.csv")),
    )
    .unwrap();
    let mut lines = text.lines();
    let header = csv_fields(lines.next().unwrap());
    let content = header.iter().position(|h| h == "Content").unwrap();
    let event = header.iter().position(|h| h == "EventId").unwrap();
    let template = header.iter().position(|h| h == "EventTemplate").unwrap();
    lines
        .map(|l| {
            let f = csv_fields(l);
            (f[content].clone(), f[event].clone(), f[template].clone())
        })
        .collect()
}

/// The raw lines of a system's `X_2k.log`, header and all, as a pod would print them (carriage
/// returns become spaces), in the order of the structured file's rows.
pub fn raw(dir: &std::path::Path, system: &str) -> Vec<String> {
    let bytes = std::fs::read(dir.join(system).join(format!("{system}_2k.log"))).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<String> = text.split('\n').map(|l| l.replace('\r', " ")).collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines
}

/// Run one of the reference parsers' scripts (scripts/logparsers/NAME) with `args` and parse the
/// JSON it prints. When it cannot run (logparser3 or drain3 missing), fails under CI=true and
/// returns None elsewhere, with a notice.
pub fn run_reference(name: &str, args: &[std::ffi::OsString]) -> Option<serde_json::Value> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts/logparsers")
        .join(name);
    let out = std::process::Command::new("python3")
        .arg(&script)
        .args(args)
        .output();
    match out {
        Ok(o) if o.status.success() => {
            Some(serde_json::from_slice(&o.stdout).expect("the reference script prints JSON"))
        }
        other => {
            let why = match other {
                Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                Err(e) => e.to_string(),
            };
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "CI=true but {name} did not run (pip install -r scripts/logparsers/requirements.txt): {why}"
            );
            eprintln!("notice: {name} did not run, so the reference is not shown: {why}");
            None
        }
    }
}
