//! Small pure helpers shared by the controller and the end-to-end world.

pub mod smp;

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Serialise JSON with object keys sorted, so equal documents hash equally.
pub fn canonical_json(v: &Value) -> String {
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String((*k).clone()).to_string());
                    out.push(':');
                    write(&m[*k], out);
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(x, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(v, &mut out);
    out
}

/// A short stable hash of a JSON document (10 hex characters).
pub fn short_hash(v: &Value) -> String {
    let digest = Sha256::digest(canonical_json(v).as_bytes());
    digest.iter().take(5).map(|b| format!("{b:02x}")).collect()
}

/// Trim a string to at most `max` characters, marking the cut.
pub fn trim_to(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// `n` and the noun in the number it takes: `1 pod`, `0 pods`, `3 batches`.
pub fn count(n: impl Into<i64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Age like kubectl prints it: 45s, 3m, 2h, 5d.
pub fn age(
    from: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    now: jiff::Timestamp,
) -> String {
    let Some(t) = from else {
        return "-".into();
    };
    let s = now.as_second().saturating_sub(t.0.as_second()).max(0);
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ages_read_like_kubectl() {
        let now: jiff::Timestamp = "2026-11-21T10:05:00Z".parse().unwrap();
        let t = |s: &str| k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(s.parse().unwrap());
        assert_eq!(age(Some(&t("2026-11-21T10:04:15Z")), now), "45s");
        assert_eq!(age(Some(&t("2026-11-21T07:00:00Z")), now), "3h");
        assert_eq!(age(None, now), "-");
    }

    #[test]
    fn a_count_takes_the_noun_in_its_number() {
        assert_eq!(count(1, "pod", "pods"), "1 pod");
        assert_eq!(count(0u32, "pod", "pods"), "0 pods");
        assert_eq!(count(3i32, "batch", "batches"), "3 batches");
        assert_eq!(count(-1, "pod", "pods"), "-1 pods");
    }

    #[test]
    fn hash_ignores_key_order() {
        let a: Value = serde_json::from_str(r#"{"a":1,"b":{"c":2,"d":3}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"b":{"d":3,"c":2},"a":1}"#).unwrap();
        assert_eq!(short_hash(&a), short_hash(&b));
        assert_ne!(short_hash(&a), short_hash(&json!({"a": 2})));
        assert_eq!(short_hash(&a).len(), 10);
    }

    #[test]
    fn trims_long_strings() {
        assert_eq!(trim_to("abcdef", 4), "abc…");
        assert_eq!(trim_to("abc", 4), "abc");
    }
}
