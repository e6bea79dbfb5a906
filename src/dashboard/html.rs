//! HTML pieces of the dashboard: escaping and the page frame.

/// Escape text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escape one path segment of a link (names are DNS labels, but a link never trusts that).
pub fn seg(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

const STYLE: &str = r#"
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#212529;background:#f8f9fa}
header{background:#212529;color:#f8f9fa;padding:10px 24px;display:flex;gap:24px;align-items:center}
header a{color:#f8f9fa;text-decoration:none;font-weight:600}
header form{margin-left:auto}
main{padding:16px 24px;max-width:1200px}
table{border-collapse:collapse;background:#fff;margin:8px 0 20px;font-size:14px}
th,td{border-bottom:1px solid #dee2e6;padding:5px 10px;text-align:left;vertical-align:top}
th{background:#f1f3f5}
td.name{white-space:nowrap}
.muted{color:#868e96}
.Pass,.Succeeded,.released{color:#2b8a3e;font-weight:600}
.Fail,.RolledBack,.RollingBack,.Failed,.stopped{color:#c92a2a;font-weight:600}
.Inconclusive,.Paused,.AwaitingApproval,.Blocked{color:#e67700;font-weight:600}
.Progressing{color:#1c7ed6;font-weight:600}
.finding{margin:4px 0 2px;font-size:14px}
.metric{background:#fff;border:1px solid #dee2e6;padding:10px 14px;margin:10px 0}
code,pre{font-family:ui-monospace,Menlo,monospace;font-size:13px}
pre{white-space:pre-wrap;background:#f1f3f5;padding:6px 8px;margin:4px 0}
.plot{width:100%;max-width:900px;height:auto}
.kpi{display:inline-block;background:#fff;border:1px solid #dee2e6;padding:8px 14px;margin:0 8px 8px 0}
.kpi b{display:block;font-size:20px}
"#;

/// A whole page; `refresh` seconds re-load it while something is live.
pub fn page(title: &str, ns: &str, refresh: Option<u32>, body: &str) -> String {
    let meta = refresh
        .map(|s| format!(r#"<meta http-equiv="refresh" content="{s}">"#))
        .unwrap_or_default();
    format!(
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">{meta}<title>{t} · graygate</title><style>{STYLE}</style></head><body><header><a href="/">graygate</a><a href="/ns/{nsl}">namespace {ns}</a><form method="get" action="/"><input name="ns" placeholder="namespace" value="{ns}" size="16"> <button>go</button></form></header><main>{body}</main></body></html>"#,
        t = esc(title),
        ns = esc(ns),
        nsl = seg(ns),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_links_cannot_break_out() {
        assert_eq!(
            esc(r#"<a href="x">'&"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;"
        );
        assert_eq!(seg("web/../x y"), "web%2F..%2Fx%20y");
    }
}
