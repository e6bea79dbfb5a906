//! Every Markdown table in the README, docs/ and the chart renders as a table: GitHub drops a
//! table whose delimiter row has another number of cells than its header, and a body row with
//! more cells than the header loses the extra ones without a word.

use std::path::{Path, PathBuf};

/// The cells of a table row: split at pipes not escaped with a backslash (GitHub splits at a
/// pipe inside a code span too), without the outer pipes.
fn cells(row: &str) -> usize {
    let row = row.trim();
    let row = row.strip_prefix('|').unwrap_or(row);
    let row = row
        .strip_suffix('|')
        .filter(|r| !r.ends_with('\\'))
        .unwrap_or(row);
    let mut n = 1;
    let mut escaped = false;
    for c in row.chars() {
        if c == '|' && !escaped {
            n += 1;
        }
        escaped = c == '\\' && !escaped;
    }
    n
}

fn is_delimiter(row: &str) -> bool {
    let row = row.trim();
    row.contains('-')
        && row.contains('|')
        && row.trim_matches('|').split('|').all(|c| {
            let c = c.trim();
            let c = c.strip_prefix(':').unwrap_or(c);
            let c = c.strip_suffix(':').unwrap_or(c);
            !c.is_empty() && c.chars().all(|x| x == '-')
        })
}

/// Problems in one document's tables, as `line: what`.
fn problems(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut fenced = false;
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i].trim_start();
        if l.starts_with("```") || l.starts_with("~~~") {
            fenced = !fenced;
        }
        if !fenced && l.starts_with('|') && i + 1 < lines.len() && is_delimiter(lines[i + 1]) {
            let header = cells(lines[i]);
            let delimiter = cells(lines[i + 1]);
            if delimiter != header {
                out.push(format!(
                    "{}: header has {header} cells, delimiter row {delimiter}",
                    i + 2
                ));
            }
            let mut j = i + 2;
            while j < lines.len() && lines[j].trim_start().starts_with('|') {
                let n = cells(lines[j]);
                if n > header {
                    out.push(format!("{}: {n} cells under a header of {header}", j + 1));
                }
                j += 1;
            }
            i = j;
            continue;
        }
        i += 1;
    }
    out
}

fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            markdown_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "md") {
            out.push(p);
        }
    }
}

#[test]
fn every_table_in_the_docs_has_as_many_cells_in_each_row_as_its_header() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    for d in ["docs", "chart", "examples", "e2e", "eval"] {
        if root.join(d).is_dir() {
            markdown_files(&root.join(d), &mut files);
        }
    }
    let mut bad = Vec::new();
    let mut tables = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        tables += text
            .lines()
            .filter(|l| is_delimiter(l) && l.trim_start().starts_with('|'))
            .count();
        for p in problems(&text) {
            bad.push(format!("{}:{p}", f.strip_prefix(root).unwrap().display()));
        }
    }
    assert!(tables >= 20, "only {tables} tables found in {files:?}");
    assert!(
        bad.is_empty(),
        "tables that do not render:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_check_sees_a_delimiter_row_too_long_and_a_row_too_wide() {
    let good = "| a | b |\n| --- | ---: |\n| 1 | `x \\| y` |\n";
    assert!(problems(good).is_empty(), "{:?}", problems(good));
    let long = "| a | b |\n| --- | ---: | ---: |\n| 1 | 2 |\n";
    assert_eq!(problems(long), ["2: header has 2 cells, delimiter row 3"]);
    let wide = "| a | b |\n| --- | --- |\n| 1 | 2 | 3 |\n";
    assert_eq!(problems(wide), ["3: 3 cells under a header of 2"]);
    // Pipes in a fenced block are not a table.
    assert!(problems("```\n| a |\n| --- | --- |\n```\n").is_empty());
}
