//! Detector and judgement speed. Results and the machine go to docs/performance.md.

use criterion::{Criterion, criterion_group, criterion_main};
use graygate::analysis::judge::{self, GroupData, Groups, Metric, MetricData};
use graygate::api::Direction;
use graygate::detect::{dtw, kde, mann_whitney};
use graygate_eval::synthetic::Rng;
use std::hint::black_box;

fn sample(rng: &mut Rng, n: usize, mean: f64) -> Vec<f64> {
    (0..n).map(|_| mean + 10.0 * rng.normal()).collect()
}

fn group(rng: &mut Rng, pods: usize, points: usize, mean: f64) -> GroupData {
    GroupData(
        (0..pods)
            .map(|p| {
                (
                    format!("pod-{p}"),
                    (0..points)
                        .map(|i| (i as f64, mean + 10.0 * rng.normal()))
                        .collect(),
                )
            })
            .collect(),
    )
}

fn batch(rng: &mut Rng, detectors: &[&str]) -> Vec<(Metric, MetricData)> {
    // 50 metrics × 4 groups × 600 points (split over pods), every value detector on each.
    (0..50)
        .map(|i| {
            let m = Metric {
                name: format!("metric-{i}"),
                direction: Direction::Increase,
                detectors: detectors.iter().map(|d| d.to_string()).collect(),
                threshold: None,
                min_delta: 0.1,
                critical: i % 10 == 0,
                weight: 1.0,
                kind: graygate::api::MetricKind::Other,
                advisory: false,
            };
            let data = MetricData::Plain(Groups {
                change: group(rng, 2, 300, 100.0),
                control: Some(group(rng, 4, 150, 100.0)),
                background: Some(group(rng, 4, 150, 100.0)),
                history: Some(group(rng, 4, 150, 100.0)),
                running: None,
            });
            (m, data)
        })
        .collect()
}

fn benches(c: &mut Criterion) {
    let mut rng = Rng::new(1);
    let x = sample(&mut rng, 600, 102.0);
    let y = sample(&mut rng, 600, 100.0);
    c.bench_function("mann-whitney 600 vs 600 (with Hodges-Lehmann)", |b| {
        b.iter(|| {
            mann_whitney::detect(
                black_box(&x),
                black_box(&y),
                mann_whitney::Params {
                    direction: Direction::Increase,
                    alpha: 0.01,
                    min_delta: 0.1,
                    min_samples: 10,
                },
            )
        })
    });
    c.bench_function("mann-whitney U test only 600 vs 600", |b| {
        b.iter(|| {
            mann_whitney::mann_whitney_u(
                black_box(&x),
                black_box(&y),
                mann_whitney::Alternative::Greater,
                mann_whitney::Method::Auto,
            )
        })
    });
    c.bench_function("kde 600 vs 600", |b| {
        b.iter(|| kde::score(black_box(&x), black_box(&y)))
    });
    c.bench_function("dtw 600 x 600, 10% band", |b| {
        b.iter(|| dtw::shape_distance(black_box(&x), black_box(&y), 0.1))
    });
    let data = batch(
        &mut rng,
        &[
            "peers",
            "mann-whitney",
            "variance",
            "kde",
            "three-sigma",
            "dtw",
        ],
    );
    c.bench_function(
        "batch judgement: 50 metrics x 4 groups x 600 points, every detector on every metric",
        |b| b.iter(|| judge::judge(black_box(&data), &judge::Params::default())),
    );
    let data = batch(&mut rng, &["peers"]);
    c.bench_function(
        "batch judgement: 50 metrics x 4 groups x 600 points, default detector (peers)",
        |b| b.iter(|| judge::judge(black_box(&data), &judge::Params::default())),
    );
    let cases = graygate_eval::synthetic::generate(7, 10);
    c.bench_function("evaluation: 110 labelled cases, both judges", |b| {
        b.iter(|| graygate_eval::synthetic::evaluate(black_box(&cases)))
    });
}

criterion_group!(name = detectors; config = Criterion::default().sample_size(30); targets = benches);
criterion_main!(detectors);
