//! Every statistical detector against reference values computed with scipy/numpy by
//! scripts/reference/detectors.py (stored in tests/fixtures/detectors.json), to 1e-9 relative.

use graygate::detect::mann_whitney::{Alternative, Method, hodges_lehmann, mann_whitney_u};
use graygate::detect::{dtw, kde, proportion, three_sigma, variance};
use serde_json::Value;

/// A fixture file of tests/fixtures.
fn load(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn fixtures() -> Value {
    load("detectors.json")
}

fn arr(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[track_caller]
fn close(got: f64, want: f64, what: &str) {
    let ok = if want == 0.0 {
        got.abs() < 1e-300
    } else {
        ((got - want) / want).abs() <= 1e-9
    };
    assert!(
        ok,
        "{what}: got {got:e}, scipy says {want:e} (relative error {:e})",
        ((got - want) / want).abs()
    );
}

fn alternative(s: &str) -> Alternative {
    match s {
        "greater" => Alternative::Greater,
        "less" => Alternative::Less,
        _ => Alternative::TwoSided,
    }
}

#[test]
fn mann_whitney_matches_scipy() {
    let f = fixtures();
    let cases = f["cases"]["mann_whitney"].as_array().unwrap();
    assert!(cases.len() >= 50);
    for (i, c) in cases.iter().enumerate() {
        let method = match c["method"].as_str().unwrap() {
            "exact" => Method::Exact,
            "asymptotic" => Method::Asymptotic,
            _ => Method::Auto,
        };
        let r = mann_whitney_u(
            &arr(&c["x"]),
            &arr(&c["y"]),
            alternative(c["alternative"].as_str().unwrap()),
            method,
        );
        let what = format!(
            "case {i} ({} {}, n={}/{})",
            c["alternative"],
            c["method"],
            c["x"].as_array().unwrap().len(),
            c["y"].as_array().unwrap().len()
        );
        close(r.u1, c["u1"].as_f64().unwrap(), &format!("{what} U"));
        close(r.p_value, c["p"].as_f64().unwrap(), &format!("{what} p"));
    }
}

#[test]
fn hodges_lehmann_matches_numpy() {
    for c in fixtures()["cases"]["hodges_lehmann"].as_array().unwrap() {
        close(
            hodges_lehmann(&arr(&c["x"]), &arr(&c["y"])),
            c["shift"].as_f64().unwrap(),
            "shift",
        );
    }
}

#[test]
fn fisher_and_two_proportion_match_scipy() {
    let f = fixtures();
    for c in f["cases"]["fisher"].as_array().unwrap() {
        let t: Vec<u64> = c["table"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()))
            .collect();
        let p = proportion::fisher_exact(
            t[0],
            t[1],
            t[2],
            t[3],
            alternative(c["alternative"].as_str().unwrap()),
        );
        close(
            p,
            c["p"].as_f64().unwrap(),
            &format!("fisher {:?} {}", t, c["alternative"]),
        );
    }
    for c in f["cases"]["two_proportion"].as_array().unwrap() {
        let g = |k: &str| c[k].as_f64().unwrap();
        let z = proportion::two_proportion_z(g("a"), g("n1"), g("c"), g("n2"));
        close(z, g("z"), "z");
        close(graygate::detect::normal_sf(z), g("p_greater"), "p");
    }
}

#[test]
fn brown_forsythe_matches_scipy_levene_median() {
    for c in fixtures()["cases"]["brown_forsythe"].as_array().unwrap() {
        let (x, y) = (arr(&c["x"]), arr(&c["y"]));
        let (w, p) = variance::brown_forsythe(&[&x, &y]);
        close(w, c["w"].as_f64().unwrap(), "W");
        close(p, c["p"].as_f64().unwrap(), "p");
    }
}

#[test]
fn three_sigma_matches_numpy() {
    for c in fixtures()["cases"]["three_sigma"].as_array().unwrap() {
        let (x, b) = (arr(&c["change"]), arr(&c["background"]));
        close(
            three_sigma::score(&x, &b, false),
            c["classic"].as_f64().unwrap(),
            "classic",
        );
        close(
            three_sigma::score(&x, &b, true),
            c["robust"].as_f64().unwrap(),
            "robust",
        );
    }
}

#[test]
fn kde_matches_scipy_gaussian_kde() {
    for c in fixtures()["cases"]["kde"].as_array().unwrap() {
        let (x, y) = (arr(&c["change"]), arr(&c["control"]));
        let h = kde::silverman_bandwidth(&y);
        close(h, c["bandwidth"].as_f64().unwrap(), "bandwidth");
        close(
            kde::mean_log_likelihood(&x, &y, h),
            c["change_ll"].as_f64().unwrap(),
            "change log-likelihood",
        );
        close(
            kde::loo_log_likelihood(&y, h),
            c["loo_ll"].as_f64().unwrap(),
            "leave-one-out log-likelihood",
        );
        close(kde::score(&x, &y), c["score"].as_f64().unwrap(), "score");
    }
}

#[test]
fn dtw_matches_the_reference_implementation() {
    for c in fixtures()["cases"]["dtw"].as_array().unwrap() {
        let d = dtw::shape_distance(
            &arr(&c["a"]),
            &arr(&c["b"]),
            c["fraction"].as_f64().unwrap(),
        );
        close(d, c["distance"].as_f64().unwrap(), "dtw");
    }
}

#[test]
fn peers_matches_the_numpy_reference() {
    use graygate::api::Direction;
    use graygate::detect::peers::{Params, Unit, departure};
    let f = load("peers.json");
    let units = |v: &Value| -> Vec<Unit> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|u| {
                u.as_array()
                    .unwrap()
                    .iter()
                    .map(|p| (p[0].as_i64().unwrap(), p[1].as_f64().unwrap()))
                    .collect()
            })
            .collect()
    };
    let cases = f["cases"].as_array().unwrap();
    assert!(cases.len() >= 6);
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let p = Params {
            direction: match c["direction"].as_str().unwrap() {
                "decrease" => Direction::Decrease,
                "either" => Direction::Either,
                _ => Direction::Increase,
            },
            min_delta: c["min_delta"].as_f64().unwrap(),
            far: c["far_factor"].as_f64().unwrap(),
            ..Params::default()
        };
        let d = departure(&units(&c["change"]), &units(&c["reference"]), &p);
        close(
            d.spread,
            c["spread"].as_f64().unwrap(),
            &format!("{name}: spread"),
        );
        close(
            d.level,
            c["level"].as_f64().unwrap(),
            &format!("{name}: level"),
        );
        close(
            d.band,
            c["band"].as_f64().unwrap(),
            &format!("{name}: band"),
        );
        let want = arr(&c["excess"]);
        assert_eq!(d.excess.len(), want.len(), "{name}: slots");
        for (g, w) in d.excess.iter().zip(&want) {
            close(*g, *w, &format!("{name}: excess"));
        }
        assert_eq!(
            d.beyond as u64,
            c["beyond"].as_u64().unwrap(),
            "{name}: beyond"
        );
        assert_eq!(
            d.longest as u64,
            c["longest"].as_u64().unwrap(),
            "{name}: longest"
        );
        assert_eq!(d.far as u64, c["far"].as_u64().unwrap(), "{name}: far");
        assert_eq!(d.pooled, c["pooled"].as_bool().unwrap(), "{name}: pooled");
    }
}

fn log_surge_fixtures() -> Value {
    load("log_surge.json")
}

#[test]
fn log_surge_binomial_tail_matches_scipy_whole_and_quasi() {
    use graygate::logs::detect::binomial_sf;
    let f = log_surge_fixtures();
    let cases = f["cases"]["binomial_sf"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for (i, c) in cases.iter().enumerate() {
        let got = binomial_sf(
            c["k"].as_f64().unwrap(),
            c["n"].as_f64().unwrap(),
            c["p"].as_f64().unwrap(),
        );
        close(
            got,
            c["sf"].as_f64().unwrap(),
            &format!("binomial_sf case {i}"),
        );
    }
}

#[test]
fn log_surge_dispersion_matches_numpy() {
    use graygate::logs::detect::dispersion;
    let f = log_surge_fixtures();
    let cases = f["cases"]["dispersion"].as_array().unwrap();
    assert!(cases.len() >= 5);
    for (i, c) in cases.iter().enumerate() {
        let all = arr(&c["counts"]);
        // The detector keeps only the windows where the template showed, and how many there were.
        let shown: Vec<f64> = all.iter().copied().filter(|x| *x > 0.0).collect();
        let got = dispersion(&shown, all.len()).unwrap();
        close(
            got,
            c["index"].as_f64().unwrap(),
            &format!("dispersion case {i}"),
        );
    }
}
