//! Plain, column-aligned text tables, as kubectl prints them.

use crate::api::Finding;

/// Lay out `rows` under `headers`, columns two spaces apart, one string per line.
pub fn lines(headers: &[&str], rows: &[Vec<String>]) -> Vec<String> {
    let widths: Vec<usize> = (0..headers.len())
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .chain([headers[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    std::iter::once(line(headers.to_vec()))
        .chain(
            rows.iter()
                .map(|r| line(r.iter().map(String::as_str).collect())),
        )
        .collect()
}

/// Findings as a table, each followed by its explanation on an indented line.
pub fn findings(findings: &[Finding]) -> String {
    let rows: Vec<Vec<String>> = findings
        .iter()
        .map(|f| {
            let outcome = match (&f.suppressed_by, f.outcome) {
                (Some(rule), _) => format!("Pass ({rule})"),
                (None, Some(o)) => o.as_str().to_string(),
                _ => "-".into(),
            };
            let num = |x: Option<f64>| x.map(crate::detect::fmt_num).unwrap_or_else(|| "-".into());
            vec![
                f.metric.clone(),
                f.detector.clone(),
                f.groups.clone(),
                outcome,
                num(f.score),
                num(f.threshold),
            ]
        })
        .collect();
    let mut out = Vec::new();
    let mut table = lines(
        &[
            "METRIC",
            "DETECTOR",
            "GROUPS",
            "OUTCOME",
            "SCORE",
            "THRESHOLD",
        ],
        &rows,
    )
    .into_iter();
    out.extend(table.next());
    for (line, f) in table.zip(findings) {
        out.push(line);
        out.push(format!("    {}", f.explanation));
    }
    out.join("\n")
}
