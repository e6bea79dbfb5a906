//! Template mining throughput on the concatenated loghub samples (../shared/data/loghub).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use graygate::logs::brain::{Brain, Config};
use std::hint::black_box;

#[path = "../tests/support/loghub.rs"]
mod support;

fn contents() -> Option<Vec<String>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/loghub");
    if !dir.is_dir() {
        eprintln!(
            "notice: {} not found; skipping the log mining benchmark",
            dir.display()
        );
        return None;
    }
    Some(
        support::SYSTEMS
            .iter()
            .flat_map(|s| support::load(&dir, s).into_iter().map(|(c, _)| c))
            .collect(),
    )
}

fn bench(c: &mut Criterion) {
    let Some(lines) = contents() else { return };
    let mut g = c.benchmark_group("template mining");
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.bench_function(
        format!(
            "{} loghub lines, fresh parser, settled, one thread",
            lines.len()
        ),
        |b| {
            b.iter(|| {
                let mut m = Brain::new(Config::default());
                for l in &lines {
                    black_box(m.add(l));
                }
                black_box(m.settle());
            })
        },
    );
    g.finish();
}

criterion_group!(name = logs; config = Criterion::default().sample_size(20); targets = bench);
criterion_main!(logs);
