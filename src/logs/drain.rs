//! An online Drain-style log template miner: lines are routed through a fixed-depth prefix tree
//! (token count, then the leading tokens), compared with the templates in the leaf, and either
//! merged into the most similar one (differing positions become `<*>`) or start a new template.
//!
//! Written for speed: tokens are interned to integers once, templates and tree keys are
//! integers, and a line is tokenised into a reused buffer, so the hot path does not allocate
//! per token.
//!
//! The rules are kept general, so that they hold on logs the miner was not tuned on:
//! - a token is a variable by its shape alone (a digit, a long hex run, a path), never by a
//!   list of words of one system;
//! - values glued to a word are split off (`key=value`, `word:1234`, `[x]`, `a,b`);
//! - the prefix tree is routed only by word-like tokens (letters, `_`, `-`, a trailing `:`):
//!   a leading program name, host or file (`chrome.exe`, `proxy.example.org`) is not trusted
//!   as structure, so one event written by many programs is not split into one group each;
//! - the similarity threshold and depth are chosen by cross-validation across systems
//!   (docs/performance.md).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A fast, non-cryptographic hasher for short keys (the Fx hash of rustc).
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut v = 0u64;
            for (i, b) in chunk.iter().enumerate() {
                v |= u64::from(*b) << (8 * i);
            }
            self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u32(&mut self, i: u32) {
        self.0 = (self.0.rotate_left(5) ^ u64::from(i)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, i: usize) {
        self.0 = (self.0.rotate_left(5) ^ i as u64).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// The wildcard token id.
pub const WILD: u32 = u32::MAX;

/// Miner settings. The defaults were chosen by cross-validation across loghub systems (tuned on
/// four, measured on the other four, both ways: both halves chose depth 4 and similarity 0.8);
/// see docs/performance.md.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Tree depth: the token-count level plus `depth - 2` leading-token levels.
    pub depth: usize,
    /// Share of equal tokens needed to join a template.
    pub similarity: f64,
    /// Children per tree node before new tokens go to the wildcard child.
    pub max_children: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            depth: 4,
            similarity: 0.8,
            max_children: 100,
        }
    }
}

/// A template.
#[derive(Clone, Debug)]
pub struct Cluster {
    /// Token ids; `WILD` for variables.
    pub tokens: Vec<u32>,
    /// Lines matched so far.
    pub size: u64,
    /// The first line of the cluster and its tokens' byte spans, to render the template with
    /// the line's own separators.
    example: Box<str>,
    spans: Vec<(u32, u32)>,
}

#[derive(Default)]
struct Node {
    children: FxMap<u32, Node>,
    clusters: Vec<u32>,
}

/// The miner.
pub struct Miner {
    cfg: Config,
    interner: FxMap<Box<str>, u32>,
    words: Vec<Box<str>>,
    by_length: FxMap<usize, Node>,
    clusters: Vec<Cluster>,
    buf: Vec<u32>,
    spans: Vec<(u32, u32)>,
}

/// Whether a token is a variable by its shape: numbers, hex, IPs, UUIDs, durations, and any
/// token with a digit in it (ids, sizes, timestamps), a path, or a weekday or month name (the
/// words of a timestamp: `at Sun Jun 19 04:08:50 2005`).
pub fn is_variable(token: &str) -> bool {
    let b = token.as_bytes();
    b.iter().any(u8::is_ascii_digit)
        || (b.len() > 1 && b[0] == b'/' && b[1..].contains(&b'/'))
        // Hex ids that happen to have no decimal digit (`deadbeefcafe`); short words like `face` stay.
        || (b.len() >= 12 && b.iter().all(u8::is_ascii_hexdigit))
        || is_date_word(token)
}

/// English weekday and month names as timestamps write them (`Sun`, `June`, `Sep.`).
fn is_date_word(token: &str) -> bool {
    const WORDS: [&str; 19] = [
        "mon", "tue", "wed", "thu", "fri", "sat", "sun", "jan", "feb", "mar", "apr", "may", "jun",
        "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    const LONG: [&str; 19] = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
        "january",
        "february",
        "march",
        "april",
        "may",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
    ];
    let t = token.trim_end_matches([',', '.']);
    // Capitalised like a date (`Sun`, `JUN`), so the verb `may` or the word `march` stay words.
    if t.len() < 3 || !t.as_bytes()[0].is_ascii_uppercase() {
        return false;
    }
    (t.len() == 3 && WORDS.iter().any(|w| t.eq_ignore_ascii_case(w)))
        || (t.len() >= 5 && LONG.iter().any(|w| t.eq_ignore_ascii_case(w)))
}

/// Split a line into tokens: whitespace, and the punctuation that glues values to words
/// (`key=value`, `a,b`, `[x]`, `"x"`), so values become tokens of their own.
pub fn tokens(line: &str) -> impl Iterator<Item = &str> {
    token_spans(line).map(move |(a, b)| &line[a..b])
}

fn is_separator(c: char) -> bool {
    c.is_whitespace() || matches!(c, '=' | ',' | '[' | ']' | '"' | '\'')
}

/// Byte spans of the tokens of a line. A `word:value` token whose value has a digit is split
/// after the colon (`onExtend:1514038530000` → `onExtend:` and the number).
pub fn token_spans(line: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut pos = 0;
    let mut pending: Option<(usize, usize)> = None;
    std::iter::from_fn(move || {
        if let Some(p) = pending.take() {
            return Some(p);
        }
        let bytes = line.as_bytes();
        let rest = &line[pos..];
        let start = pos + rest.find(|c: char| !is_separator(c))?;
        let len = line[start..]
            .find(is_separator)
            .unwrap_or(line.len() - start);
        pos = start + len;
        let tok = &bytes[start..pos];
        if let Some(colon) = tok.iter().position(|b| *b == b':')
            && colon >= 2
            && colon + 1 < tok.len()
            && tok[..colon]
                .iter()
                .all(|b| b.is_ascii_alphabetic() || *b == b'_')
            && tok[colon + 1].is_ascii_digit()
        {
            pending = Some((start + colon + 1, pos));
            return Some((start, start + colon + 1));
        }
        Some((start, pos))
    })
}

/// Whether a token is trusted as structure for routing: letters with `_` and `-` (no dots,
/// slashes or digits), and at most a trailing `:`.
fn is_word(token: &str) -> bool {
    let t = token.strip_suffix(':').unwrap_or(token);
    !t.is_empty()
        && t.bytes().any(|b| b.is_ascii_alphabetic())
        && t.bytes()
            .all(|b| b.is_ascii_alphabetic() || b == b'_' || b == b'-')
}

impl Miner {
    /// A miner with `cfg`.
    pub fn new(cfg: Config) -> Self {
        Miner {
            cfg,
            interner: FxMap::default(),
            words: Vec::new(),
            by_length: FxMap::default(),
            clusters: Vec::new(),
            buf: Vec::with_capacity(64),
            spans: Vec::with_capacity(64),
        }
    }

    fn intern(&mut self, token: &str) -> u32 {
        if let Some(id) = self.interner.get(token) {
            return *id;
        }
        let id = self.words.len() as u32;
        self.words.push(token.into());
        self.interner.insert(token.into(), id);
        id
    }

    /// Add a line; returns the id of its template.
    pub fn add(&mut self, line: &str) -> u32 {
        let mut buf = std::mem::take(&mut self.buf);
        let mut spans = std::mem::take(&mut self.spans);
        buf.clear();
        spans.clear();
        let mut route = 0u64;
        for (i, (a, b)) in token_spans(line).enumerate() {
            let t = &line[a..b];
            let id = if is_variable(t) { WILD } else { self.intern(t) };
            if i < 64 && id != WILD && is_word(t) {
                route |= 1 << i;
            }
            buf.push(id);
            spans.push((a as u32, b as u32));
        }
        let id = self.place(&buf, route, line, &spans);
        self.buf = buf;
        self.spans = spans;
        id
    }

    fn place(&mut self, toks: &[u32], route: u64, line: &str, spans: &[(u32, u32)]) -> u32 {
        let depth = self.cfg.depth.saturating_sub(2).max(1);
        let max_children = self.cfg.max_children;
        let node = self.by_length.entry(toks.len()).or_default();
        let mut node = node;
        for (i, &t) in toks.iter().take(depth).enumerate() {
            let routable = t != WILD && route & (1 << i) != 0;
            let key = if routable
                && (node.children.contains_key(&t) || node.children.len() < max_children)
            {
                t
            } else {
                WILD
            };
            node = node.children.entry(key).or_default();
        }
        // The most similar template in the leaf.
        let mut best: Option<(u32, f64, usize)> = None;
        for &cid in &node.clusters {
            let c = &self.clusters[cid as usize];
            let (mut same, mut wild) = (0usize, 0usize);
            for (a, b) in c.tokens.iter().zip(toks) {
                if *a == WILD && *b == WILD {
                    // A variable where the template has one: as good as an equal token.
                    same += 1;
                } else if *a == WILD {
                    wild += 1;
                } else if a == b {
                    same += 1;
                }
            }
            let sim = if toks.is_empty() {
                1.0
            } else {
                same as f64 / toks.len() as f64
            };
            if best.is_none_or(|(_, s, w)| sim > s || (sim == s && wild > w)) {
                best = Some((cid, sim, wild));
            }
        }
        match best {
            Some((cid, sim, _)) if sim >= self.cfg.similarity || toks.is_empty() => {
                let c = &mut self.clusters[cid as usize];
                for (a, b) in c.tokens.iter_mut().zip(toks) {
                    if *a != *b {
                        *a = WILD;
                    }
                }
                c.size += 1;
                cid
            }
            _ => {
                let cid = self.clusters.len() as u32;
                self.clusters.push(Cluster {
                    tokens: toks.to_vec(),
                    size: 1,
                    example: line.into(),
                    spans: spans.to_vec(),
                });
                node.clusters.push(cid);
                cid
            }
        }
    }

    /// The template text of a cluster: its first line with every variable position as `<*>`.
    pub fn template(&self, id: u32) -> String {
        let Some(c) = self.clusters.get(id as usize) else {
            return String::new();
        };
        let mut out = String::with_capacity(c.example.len());
        let mut at = 0usize;
        for (tok, (a, b)) in c.tokens.iter().zip(&c.spans) {
            let (a, b) = (*a as usize, *b as usize);
            out.push_str(&c.example[at..a]);
            if *tok == WILD {
                out.push_str("<*>");
            } else {
                out.push_str(&c.example[a..b]);
            }
            at = b;
        }
        out.push_str(&c.example[at..]);
        out
    }

    /// Every template so far.
    pub fn clusters(&self) -> &[Cluster] {
        &self.clusters
    }
}

/// Grouping accuracy: a line is correct when the set of lines in its group equals the set of
/// lines sharing its ground-truth event id.
pub fn grouping_accuracy(predicted: &[u32], truth: &[&str]) -> f64 {
    let mut by_pred: FxMap<u32, Vec<usize>> = FxMap::default();
    let mut by_truth: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, (p, t)) in predicted.iter().zip(truth).enumerate() {
        by_pred.entry(*p).or_default().push(i);
        by_truth.entry(t).or_default().push(i);
    }
    let mut correct = 0usize;
    for lines in by_pred.values() {
        let t = truth[lines[0]];
        if by_truth.get(t).is_some_and(|tl| tl == lines) {
            correct += lines.len();
        }
    }
    correct as f64 / predicted.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similar_lines_share_a_template_with_variables_masked() {
        let mut m = Miner::new(Config::default());
        let a = m.add("GET /api/orders/48213 status=200 duration_ms=43 request_id=7f3c2a9e-0001");
        let b = m.add("GET /api/orders/11 status=200 duration_ms=7 request_id=00ab-0002");
        let c = m.add("WARN slow call to inventory-svc took 812ms");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            m.template(a),
            "GET <*> status=<*> duration_ms=<*> request_id=<*>"
        );
        let d = m.add("WARN slow call to payments-svc took 1200ms");
        assert_eq!(c, d);
        assert_eq!(m.template(c), "WARN slow call to <*> took <*>");
    }

    #[test]
    fn variables_by_shape() {
        for v in [
            "42",
            "10.0.0.1:80",
            "7f3c2a9e-0001",
            "12ms",
            "/var/log/app.log",
            "deadbeefcafe",
            "blk_-69522958",
        ] {
            assert!(is_variable(v), "{v}");
        }
        for d in ["Sun", "Jun", "SEP", "Monday"] {
            assert!(is_variable(d), "{d}");
        }
        for w in [
            "GET",
            "status",
            "inventory-svc",
            "face",
            "/",
            "may",
            "Mayday",
        ] {
            assert!(!is_variable(w), "{w}");
        }
    }

    #[test]
    fn values_glued_to_words_are_split_off() {
        let t: Vec<&str> = tokens("onExtend:1514038530000 14 k=v [x] time: 0.5").collect();
        assert_eq!(
            t,
            [
                "onExtend:",
                "1514038530000",
                "14",
                "k",
                "v",
                "x",
                "time:",
                "0.5"
            ]
        );
        let t: Vec<&str> = tokens("10.0.0.1:80 http://h:8080/x ab:c").collect();
        assert_eq!(t, ["10.0.0.1:80", "http://h:8080/x", "ab:c"]);
    }

    #[test]
    fn leading_program_names_do_not_split_an_event() {
        let mut m = Miner::new(Config::default());
        let a = m.add("chrome.exe - proxy.example.org:5070 close, 0 bytes sent, 12 bytes received");
        let b =
            m.add("firefox.exe - proxy.example.org:5070 close, 403 bytes sent, 0 bytes received");
        assert_eq!(a, b);
        assert_eq!(
            m.template(a),
            "<*> - <*> close, <*> bytes sent, <*> bytes received"
        );
    }

    #[test]
    fn grouping_accuracy_counts_exact_groups() {
        assert_eq!(grouping_accuracy(&[1, 1, 2, 3], &["a", "a", "b", "b"]), 0.5);
        assert_eq!(grouping_accuracy(&[1, 1, 2], &["a", "a", "b"]), 1.0);
    }
}
