//! An online Drain-style log template miner: lines are routed through a fixed-depth prefix tree
//! (token count, then the leading tokens), compared with the templates in the leaf, and either
//! merged into the most similar one (differing positions become `<*>`) or start a new template.
//!
//! Written for speed: tokens are interned to integers once, templates and tree keys are
//! integers, and a line is tokenised into a reused buffer, so the hot path does not allocate
//! per token.

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

/// Miner settings. One default serves every system we measured (see docs/performance.md).
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
            similarity: 0.65,
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
}

/// Whether a token is a variable by its shape: numbers, hex, IPs, UUIDs, durations, and any
/// token with a digit in it (ids, sizes, timestamps), or a path.
pub fn is_variable(token: &str) -> bool {
    let b = token.as_bytes();
    b.iter().any(u8::is_ascii_digit)
        || (b.len() > 1 && b[0] == b'/' && b[1..].contains(&b'/'))
        // Hex ids that happen to have no decimal digit (`deadbeefcafe`); short words like `face` stay.
        || (b.len() >= 12 && b.iter().all(u8::is_ascii_hexdigit))
}

/// Split a line into tokens: whitespace, and the punctuation that glues values to words
/// (`key=value`, `a,b`, `[x]`), so values become tokens of their own.
pub fn tokens(line: &str) -> impl Iterator<Item = &str> {
    line.split(|c: char| c.is_whitespace() || matches!(c, '=' | ',' | '[' | ']' | '"' | '\''))
        .filter(|t| !t.is_empty())
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
        buf.clear();
        for t in tokens(line) {
            let id = if is_variable(t) { WILD } else { self.intern(t) };
            buf.push(id);
        }
        let id = self.place(&buf);
        self.buf = buf;
        id
    }

    fn place(&mut self, toks: &[u32]) -> u32 {
        let depth = self.cfg.depth.saturating_sub(2).max(1);
        let max_children = self.cfg.max_children;
        let node = self.by_length.entry(toks.len()).or_default();
        let mut node = node;
        for &t in toks.iter().take(depth) {
            let key = if t != WILD
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
                });
                node.clusters.push(cid);
                cid
            }
        }
    }

    /// The template text of a cluster.
    pub fn template(&self, id: u32) -> String {
        self.clusters
            .get(id as usize)
            .map(|c| {
                c.tokens
                    .iter()
                    .map(|t| {
                        if *t == WILD {
                            "<*>"
                        } else {
                            &self.words[*t as usize]
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
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
            "GET <*> status <*> duration_ms <*> request_id <*>"
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
        for w in ["GET", "status", "inventory-svc", "face", "/"] {
            assert!(!is_variable(w), "{w}");
        }
    }

    #[test]
    fn grouping_accuracy_counts_exact_groups() {
        assert_eq!(grouping_accuracy(&[1, 1, 2, 3], &["a", "a", "b", "b"]), 0.5);
        assert_eq!(grouping_accuracy(&[1, 1, 2], &["a", "a", "b"]), 1.0);
    }
}
