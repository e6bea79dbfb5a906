//! Template mining throughput on the concatenated loghub samples (../shared/data/loghub).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use graygate::logs::drain::{Config, Miner};
use std::hint::black_box;

const SYSTEMS: [&str; 8] = [
    "Apache",
    "BGL",
    "HDFS",
    "Hadoop",
    "Linux",
    "OpenSSH",
    "Spark",
    "Zookeeper",
];

fn contents() -> Option<Vec<String>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/loghub");
    if !dir.is_dir() {
        eprintln!(
            "notice: {} not found; skipping the log mining benchmark",
            dir.display()
        );
        return None;
    }
    let mut out = Vec::new();
    for s in SYSTEMS {
        let text =
            std::fs::read_to_string(dir.join(s).join(format!("{s}_2k.log_structured.csv"))).ok()?;
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next()?.split(',').collect();
        let content = header.iter().position(|h| *h == "Content")?;
        let trailing = header.len() - 1 - content;
        for l in lines {
            // Content is followed by EventId and EventTemplate (which may contain commas):
            // take the fields before it from the left, after it by quoting rules.
            let mut fields = csv(l);
            fields.truncate(fields.len().saturating_sub(trailing));
            if let Some(c) = fields.get(content) {
                out.push(c.clone());
            }
        }
    }
    Some(out)
}

fn csv(line: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted) = (Vec::new(), String::new(), false);
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

fn bench(c: &mut Criterion) {
    let Some(lines) = contents() else { return };
    let mut g = c.benchmark_group("template mining");
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.bench_function(
        format!("{} loghub lines, fresh miner, one thread", lines.len()),
        |b| {
            b.iter(|| {
                let mut m = Miner::new(Config::default());
                for l in &lines {
                    black_box(m.add(l));
                }
            })
        },
    );
    g.finish();
}

criterion_group!(name = logs; config = Criterion::default().sample_size(20); targets = bench);
criterion_main!(logs);
