//! PromQL query templates: `{{namespace}}`, `{{pods}}`, `{{group}}`, `{{target}}`,
//! `{{window}}`, `{{interval}}`. Pod names are escaped so no template can be injected.

use std::collections::BTreeMap;

/// Variables a template may use.
pub const VARIABLES: [&str; 6] = ["namespace", "pods", "group", "target", "window", "interval"];

/// Render `template`, or say which variable is unknown or which brace is unclosed.
pub fn render(template: &str, vars: &BTreeMap<&str, String>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| {
            format!(
                "unclosed {{{{ at byte {}",
                template.len() - rest.len() + start
            )
        })?;
        let name = after[..end].trim();
        let value = vars.get(name).ok_or_else(|| {
            format!(
                "unknown variable {{{{{name}}}}} (known: {})",
                VARIABLES.map(|v| format!("{{{{{v}}}}}")).join(", ")
            )
        })?;
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A regular expression matching exactly these pod names, written for a PromQL double-quoted
/// string: RE2 metacharacters are escaped, and the escapes themselves are escaped for PromQL.
pub fn pods_regex(names: &[String]) -> String {
    if names.is_empty() {
        // Matches nothing: an empty group must not silently select every pod.
        return "$^".into();
    }
    let alternatives: Vec<String> = names.iter().map(|n| escape_literal(n)).collect();
    format!("(?:{})", alternatives.join("|"))
}

/// Escape a literal for use in an RE2 pattern inside a PromQL double-quoted string.
pub fn escape_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for c in s.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            out.push(c);
        } else if c == ' ' || (c.is_ascii_punctuation() && !"\\.+*?()|[]{}^$#&-~\"".contains(c)) {
            // Not special to RE2 (nor to PromQL strings): itself. (Escaping it would be allowed
            // by RE2 but `\<` means something else to other engines.)
            out.push(c);
        } else if c.is_ascii_punctuation() {
            // `\\` in the PromQL string is one backslash for RE2; `\"` keeps the string closed.
            out.push_str("\\\\");
            if c == '"' {
                out.push_str("\\\"");
            } else if c == '\\' {
                out.push_str("\\\\");
            } else {
                out.push(c);
            }
        } else {
            // Control characters and non-ASCII never occur in pod names; encode them inertly,
            // by code point (RE2 matches runes: a byte escape `\xc2` would be the rune U+00C2).
            out.push_str(&format!("\\\\x{{{:x}}}", u32::from(c)));
        }
    }
    out
}

/// A literal inside a PromQL double-quoted string, for an equality matcher (`namespace="…"`):
/// only the string's own escapes. (An RE2 escape such as `\-` there is a PromQL parse error:
/// "unknown escape sequence".)
pub fn promql_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// Render a duration as PromQL writes it (`45s`, `5m`, `1h30m`).
pub fn promql_duration(ms: i64) -> String {
    let secs = (ms / 1000).max(1);
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_equality_literal_keeps_dashes_and_escapes_only_what_a_promql_string_needs() {
        // A namespace such as shop-prod: RE2's `\-` inside a PromQL string does not parse.
        assert_eq!(promql_string("shop-prod"), "shop-prod");
        assert_eq!(promql_string("a.b_c"), "a.b_c");
        assert_eq!(promql_string(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(promql_string("a\nb"), "a\\u000ab");
    }

    fn vars() -> BTreeMap<&'static str, String> {
        [
            ("namespace", "shop".to_string()),
            ("pods", pods_regex(&["web-1".into(), "web.2".into()])),
            ("interval", "30s".into()),
        ]
        .into()
    }

    #[test]
    fn renders_known_variables() {
        let q = render(
            r#"rate(x{namespace="{{namespace}}",pod=~"{{ pods }}"}[{{interval}}])"#,
            &vars(),
        )
        .unwrap();
        assert_eq!(
            q,
            r#"rate(x{namespace="shop",pod=~"(?:web\\-1|web\\.2)"}[30s])"#
        );
    }

    #[test]
    fn unknown_variables_and_unclosed_braces_are_errors() {
        assert!(
            render("x{{nope}}", &vars())
                .unwrap_err()
                .contains("unknown variable {{nope}}")
        );
        assert!(render("x{{pods", &vars()).unwrap_err().contains("unclosed"));
    }

    #[test]
    fn hostile_names_cannot_break_out_of_the_string() {
        let r = pods_regex(&[r#"a"}) or vector(1) #"#.to_string()]);
        // Every quote is preceded by an escaped backslash pair and its own escape.
        assert!(!r.contains(r#"a""#));
        let q = format!(r#"up{{pod=~"{r}"}}"#);
        // The only unescaped quotes are the two delimiters.
        let mut unescaped = 0;
        let b = q.as_bytes();
        for i in 0..b.len() {
            if b[i] == b'"' {
                let mut k = i;
                let mut backslashes = 0;
                while k > 0 && b[k - 1] == b'\\' {
                    backslashes += 1;
                    k -= 1;
                }
                if backslashes % 2 == 0 {
                    unescaped += 1;
                }
            }
        }
        assert_eq!(unescaped, 2, "{q}");
        assert_eq!(pods_regex(&[]), "$^");
    }

    #[test]
    fn durations_in_promql_form() {
        assert_eq!(promql_duration(45_000), "45s");
        assert_eq!(promql_duration(5_400_000), "1h30m");
        assert_eq!(promql_duration(200), "1s");
    }
}
