//! An online log template miner that does not depend on a line's length or on the shape of one
//! system's logs.
//!
//! A line becomes a *key*: its words, with every value replaced by one wildcard. Lines with the
//! same key are one template. Three general rules decide what a value is:
//!
//! 1. **Shape.** A token with a digit, a path, a long hex run, a MAC/IPv6/time (`ff:2e:…`,
//!    `12:30:01`), or a capitalised weekday or month name is a value. Values glued to words are
//!    split off at `=`, `:`, `,`, `;`, `|`, quotes and brackets (`key=value`, `word:1234`), and a
//!    run of repeated punctuation (`instruction......0`, `a##b`) separates tokens too.
//! 2. **Extent.** A value may take any number of tokens: neighbouring values collapse into one
//!    wildcard, a bracketed group with a value inside is one value (`(1.16 KB)`, `[pid 42]`), and
//!    lines whose words agree exactly are one template wherever (and whether) values sit between
//!    them (`0 bytes sent` and `1190 bytes (1.16 KB) sent`). So an optional value, a unit or a
//!    value spelled in several tokens does not split an event, as it does in a miner that groups
//!    lines by their token count first (Drain, Brain).
//! 3. **Distinct values.** A word can be a value too (a user or host name, a program). Keys that
//!    agree everywhere but one position are a *family*; once the family has seen `distinct`
//!    different words there (as Brain's child-count rule does), or a value-shaped token beside a
//!    word, that position is a wildcard and the family one template. Few distinct words (`for
//!    root` / `for admin`) stay separate events. `distinct` is chosen by cross-validation across
//!    systems (docs/performance.md).
//!
//! Streaming and bounded: a line is looked up by its key (one hash), a new key touches its
//! families once, merged templates are joined through a union-find, and at most
//! `max_templates` templates (and a bounded key cache) are kept.

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
            self.add(v);
        }
    }
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

impl FxHasher {
    fn add(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// The wildcard in a key.
pub const WILD: u32 = u32::MAX;
/// The blanked position in a family key.
const BLANK: u32 = u32::MAX - 1;
/// Every word seen after the vocabulary is full (see [`Miner::vocabulary`]).
const UNSEEN: u32 = u32::MAX - 2;
/// Elements of a key at most; the rest of a longer line is one value.
const MAX_KEY: usize = 128;
/// Keys longer than this join no family (each family entry holds a copy of the key).
const MAX_FAMILY_KEY: usize = 48;
/// Distinct words kept per template allowed: the vocabulary's bound.
const WORDS_PER_TEMPLATE: usize = 16;

/// Miner settings. The defaults were chosen by cross-validation across loghub systems; see
/// docs/performance.md.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Config {
    /// Distinct words at one position (the rest of the key equal) that make it a variable.
    pub distinct: usize,
    /// Templates kept at most; lines of further new keys join the overflow template.
    pub max_templates: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            distinct: 4,
            max_templates: 20_000,
        }
    }
}

/// A template.
#[derive(Clone, Debug)]
pub struct Cluster {
    /// Word ids and `WILD`s.
    pub key: Box<[u32]>,
    /// Lines added to it (and, for a merged template, to the templates merged into it).
    pub size: u64,
    /// Key positions that turned out to be variables (families merged there).
    wild_at: Vec<bool>,
    /// The first line and the byte span of each key element in it, to render the template with
    /// the line's own separators.
    example: Box<str>,
    spans: Box<[(u32, u32)]>,
}

#[derive(Default)]
struct Family {
    /// Distinct words seen at the blanked position (up to `distinct`), with a cluster each.
    members: Vec<(u32, u32)>,
    /// Set once the family is merged: the template every member joined.
    merged: Option<u32>,
}

/// The miner.
pub struct Miner {
    cfg: Config,
    interner: FxMap<Box<str>, u32>,
    words: Vec<Box<str>>,
    exact: FxMap<Box<[u32]>, u32>,
    skeletons: FxMap<Box<[u32]>, u32>,
    families: FxMap<Box<[u32]>, Family>,
    parent: Vec<u32>,
    clusters: Vec<Cluster>,
    overflow: Option<u32>,
    // Reused buffers: the hot path does not allocate per token.
    pieces: Vec<Piece>,
    folded: Vec<Piece>,
    key: Vec<u32>,
    spans: Vec<(u32, u32)>,
    scratch: Vec<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Word,
    Value,
    Open(u8),
    Close(u8),
    Quote,
}

#[derive(Clone, Copy, Debug)]
struct Piece {
    kind: Kind,
    start: u32,
    end: u32,
}

/// English weekday and month names as timestamps write them (`Sun`, `June`, `Sep.`).
fn is_date_word(token: &str) -> bool {
    const SHORT: [&str; 19] = [
        "mon", "tue", "wed", "thu", "fri", "sat", "sun", "jan", "feb", "mar", "apr", "may", "jun",
        "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    const LONG: [&str; 18] = [
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
    (t.len() == 3 && SHORT.iter().any(|w| t.eq_ignore_ascii_case(w)))
        || (t.len() >= 5 && LONG.iter().any(|w| t.eq_ignore_ascii_case(w)))
}

/// Colon-separated hex groups: a MAC or IPv6 address, a time of day.
fn is_colon_hex(t: &[u8]) -> bool {
    t.contains(&b':')
        && t.iter().filter(|b| b.is_ascii_hexdigit()).count() >= 2
        && t.iter().all(|b| *b == b':' || b.is_ascii_hexdigit())
}

/// Whether a token is a value by its shape: any digit (numbers, ids, sizes, versions, IPs,
/// timestamps), a path or URL, a long hex run, colon-separated hex, or a date word.
pub fn is_variable(token: &str) -> bool {
    let b = token.as_bytes();
    b.iter().any(u8::is_ascii_digit)
        || b.contains(&b'\\')
        || is_path(b)
        || (b.len() >= 8 && {
            let h = b.strip_prefix(b"0x").unwrap_or(b);
            h.iter().all(u8::is_ascii_hexdigit)
        })
        || is_colon_hex(b)
        || is_date_word(token)
}

/// `/a/b`, `./x`, `a/b/c`, `scheme://…`: a path or URL, not a lone `/` or `and/or`.
fn is_path(b: &[u8]) -> bool {
    let slashes = b.iter().filter(|c| **c == b'/').count();
    b.len() > 1
        && slashes > 0
        && (b[0] == b'/' || b.starts_with(b"./") || slashes >= 2)
        && b.last() != Some(&b'/')
}

fn is_separator(b: u8) -> bool {
    b.is_ascii_whitespace()
        || matches!(
            b,
            b'=' | b','
                | b';'
                | b'"'
                | b'\''
                | b'|'
                | b'<'
                | b'>'
                | b'('
                | b')'
                | b'['
                | b']'
                | b'{'
                | b'}'
        )
}

fn bracket(b: u8) -> Option<Kind> {
    match b {
        b'(' => Some(Kind::Open(b')')),
        b'[' => Some(Kind::Open(b']')),
        b'{' => Some(Kind::Open(b'}')),
        b')' | b']' | b'}' => Some(Kind::Close(b)),
        _ => None,
    }
}

/// A run of two or more equal punctuation characters (`......`, `##`, `--`) separates tokens.
fn filler_at(b: &[u8], i: usize) -> usize {
    let c = b[i];
    if c.is_ascii_alphanumeric() || c == b'_' || c.is_ascii_whitespace() || c >= 0x80 {
        return 0;
    }
    let n = b[i..].iter().take_while(|x| **x == c).count();
    if n >= 2 { n } else { 0 }
}

/// Split a line into words, values and brackets (byte spans), into `out`.
fn pieces(line: &str, out: &mut Vec<Piece>) {
    out.clear();
    let b = line.as_bytes();
    let mut i = 0;
    let push_token = |start: usize, end: usize, out: &mut Vec<Piece>| {
        if start >= end {
            return;
        }
        let t = &b[start..end];
        // Colon-separated hex (a MAC, an IPv6 address, a time) is one value; otherwise a colon
        // glues a word to what follows (`ciod:`, `onExtend:1514038530000`) and splits there.
        if !t.contains(&b':') || is_colon_hex(t) || is_path(t) {
            push_part(line, start, end, out);
            return;
        }
        let mut s = start;
        for (k, c) in t.iter().enumerate() {
            if *c == b':' {
                push_part(line, s, start + k, out);
                s = start + k + 1;
            }
        }
        push_part(line, s, end, out);
    };
    let mut tok_start: Option<usize> = None;
    while i < b.len() {
        let c = b[i];
        let fill = filler_at(b, i);
        if is_separator(c) || fill > 0 {
            if let Some(s) = tok_start.take() {
                push_token(s, i, out);
            }
            if let Some(kind) = bracket(c).or((c == b'"').then_some(Kind::Quote)) {
                out.push(Piece {
                    kind,
                    start: i as u32,
                    end: i as u32 + 1,
                });
            }
            i += fill.max(1);
            continue;
        }
        if tok_start.is_none() {
            tok_start = Some(i);
        }
        i += 1;
    }
    if let Some(s) = tok_start {
        push_token(s, b.len(), out);
    }
}

fn push_part(line: &str, start: usize, end: usize, out: &mut Vec<Piece>) {
    if start >= end {
        return;
    }
    let kind = if is_variable(&line[start..end]) {
        Kind::Value
    } else {
        Kind::Word
    };
    out.push(Piece {
        kind,
        start: start as u32,
        end: end as u32,
    });
}

/// Fold bracketed groups that hold a value into one value (`(1.16 KB)`, `[client 10.0.0.1]`,
/// `(uid=0)`); a group with a quoted string in it is structure (a JSON object, a message), whose
/// words stay words. Brackets and quotes are dropped.
fn fold_brackets(pieces: &mut Vec<Piece>, out: &mut Vec<Piece>) {
    if !pieces.iter().any(|p| matches!(p.kind, Kind::Open(_))) {
        pieces.retain(|p| matches!(p.kind, Kind::Word | Kind::Value));
        return;
    }
    out.clear();
    let mut opens: Vec<(usize, u8)> = Vec::new();
    for p in pieces.iter() {
        match p.kind {
            Kind::Open(close) => {
                opens.push((out.len(), close));
                out.push(*p);
            }
            Kind::Close(c) => {
                // Unmatched or crossed brackets are punctuation only.
                let Some(pos) = opens.iter().rposition(|(_, want)| *want == c) else {
                    continue;
                };
                let (at, _) = opens[pos];
                opens.truncate(pos);
                let inside = &out[at + 1..];
                let has_value = inside.iter().any(|x| x.kind == Kind::Value);
                let quoted = inside.iter().any(|x| x.kind == Kind::Quote);
                if has_value && !quoted {
                    let start = out[at].start;
                    out.truncate(at);
                    out.push(Piece {
                        kind: Kind::Value,
                        start,
                        end: p.end,
                    });
                } else {
                    out.remove(at);
                }
            }
            _ => out.push(*p),
        }
    }
    out.retain(|p| matches!(p.kind, Kind::Word | Kind::Value));
    std::mem::swap(pieces, out);
}

impl Miner {
    /// A miner with `cfg`.
    pub fn new(cfg: Config) -> Self {
        Miner {
            cfg,
            interner: FxMap::default(),
            words: Vec::new(),
            exact: FxMap::default(),
            skeletons: FxMap::default(),
            families: FxMap::default(),
            parent: Vec::new(),
            clusters: Vec::new(),
            overflow: None,
            pieces: Vec::with_capacity(64),
            folded: Vec::with_capacity(64),
            key: Vec::with_capacity(64),
            spans: Vec::with_capacity(64),
            scratch: Vec::with_capacity(64),
        }
    }

    fn intern(&mut self, token: &str) -> u32 {
        if let Some(id) = self.interner.get(token) {
            return *id;
        }
        // Bounded memory: once the vocabulary is full, new words are all one word.
        if self.words.len() >= self.cfg.max_templates.saturating_mul(WORDS_PER_TEMPLATE) {
            return UNSEEN;
        }
        let id = self.words.len() as u32;
        self.words.push(token.into());
        self.interner.insert(token.into(), id);
        id
    }

    /// The key of a line into `self.key` / `self.spans`.
    fn make_key(&mut self, line: &str) {
        let mut ps = std::mem::take(&mut self.pieces);
        pieces(line, &mut ps);
        fold_brackets(&mut ps, &mut self.folded);
        self.key.clear();
        self.spans.clear();
        for p in &ps {
            let (a, b) = (p.start, p.end);
            // Bounded work and memory per line: past MAX_KEY elements, the rest of the line is
            // one value (a stack dump on one line, a huge payload).
            if self.key.len() >= MAX_KEY {
                if self.key.last() == Some(&WILD) {
                    if let Some(s) = self.spans.last_mut() {
                        s.1 = line.len() as u32;
                    }
                } else {
                    self.key.push(WILD);
                    self.spans.push((a, line.len() as u32));
                }
                break;
            }
            if p.kind == Kind::Value {
                if self.key.last() == Some(&WILD) {
                    if let Some(s) = self.spans.last_mut() {
                        s.1 = b;
                    }
                } else {
                    self.key.push(WILD);
                    self.spans.push((a, b));
                }
                continue;
            }
            let t = &line[a as usize..b as usize];
            // Punctuation alone (`-`, `*`, `:`) is a separator, not a word.
            if !t.bytes().any(|c| c.is_ascii_alphanumeric() || c >= 0x80) {
                continue;
            }
            let id = self.intern(t);
            self.key.push(id);
            self.spans.push((a, b));
        }
        self.pieces = ps;
    }

    /// The template a cluster has been merged into.
    pub fn resolve(&self, mut id: u32) -> u32 {
        while let Some(p) = self.parent.get(id as usize) {
            if *p == id {
                break;
            }
            id = *p;
        }
        id
    }

    fn union(&mut self, a: u32, b: u32) -> u32 {
        let (ra, rb) = (self.resolve(a), self.resolve(b));
        if ra == rb {
            return ra;
        }
        // The older template stays the root, so ids of long-lived templates are stable.
        let (root, child) = if ra < rb { (ra, rb) } else { (rb, ra) };
        self.parent[child as usize] = root;
        let moved = self.clusters[child as usize].size;
        self.clusters[root as usize].size += moved;
        self.clusters[child as usize].size = 0;
        root
    }

    fn remember(&mut self, key: &[u32], id: u32) {
        // A bounded cache: past it, a key is found again through the slower paths.
        if self.exact.len() < self.cfg.max_templates.saturating_mul(8) {
            self.exact.insert(key.into(), id);
        }
    }

    /// Add a line; returns the id of its template now (see [`Miner::resolve`] for later merges).
    pub fn add(&mut self, line: &str) -> u32 {
        self.make_key(line);
        let key = std::mem::take(&mut self.key);
        let id = self.place(&key, line);
        self.key = key;
        let root = self.resolve(id);
        self.clusters[root as usize].size += 1;
        root
    }

    fn place(&mut self, key: &[u32], line: &str) -> u32 {
        if let Some(id) = self.exact.get(key) {
            return *id;
        }
        // The same words with values elsewhere, or missing.
        let mut skeleton = std::mem::take(&mut self.scratch);
        skeleton.clear();
        skeleton.extend(key.iter().copied().filter(|t| *t != WILD));
        let found = self.skeletons.get(skeleton.as_slice()).copied();
        if let Some(id) = found {
            self.scratch = skeleton;
            self.remember(key, id);
            return id;
        }
        // A family already merged at some position.
        let mut blanked: Vec<u32> = key.to_vec();
        let positions = if key.len() > MAX_FAMILY_KEY {
            0
        } else {
            key.len()
        };
        for i in 0..positions {
            blanked[i] = BLANK;
            if let Some(id) = self.families.get(blanked.as_slice()).and_then(|f| f.merged) {
                self.scratch = skeleton;
                self.remember(key, id);
                return id;
            }
            blanked[i] = key[i];
        }
        if self.clusters.len() >= self.cfg.max_templates {
            self.scratch = skeleton;
            return self.overflow_template(line);
        }
        let id = self.clusters.len() as u32;
        self.clusters.push(Cluster {
            key: key.into(),
            size: 0,
            wild_at: vec![false; key.len()],
            example: line.into(),
            spans: self.spans.as_slice().into(),
        });
        self.parent.push(id);
        self.remember(key, id);
        self.skeletons.insert(skeleton.as_slice().into(), id);
        self.scratch = skeleton;
        self.join_families(key, id);
        id
    }

    /// Enter a new key into its families; merge a family whose position shows enough distinct
    /// words, or a value beside a word.
    fn join_families(&mut self, key: &[u32], id: u32) {
        if key.len() > MAX_FAMILY_KEY {
            return;
        }
        let mut blanked: Vec<u32> = key.to_vec();
        for i in 0..key.len() {
            blanked[i] = BLANK;
            let fam = self.families.entry(blanked.as_slice().into()).or_default();
            if fam.members.iter().all(|(w, _)| *w != key[i]) && fam.merged.is_none() {
                fam.members.push((key[i], id));
            }
            let distinct = fam.members.len();
            let has_value = fam.members.iter().any(|(w, _)| *w == WILD);
            if fam.merged.is_none()
                && (distinct >= self.cfg.distinct.max(2) || (has_value && distinct >= 2))
            {
                let members: Vec<u32> = fam.members.iter().map(|(_, c)| *c).collect();
                let mut root = members[0];
                for c in &members[1..] {
                    root = self.union(root, *c);
                }
                self.clusters[root as usize].wild_at[i] = true;
                if let Some(f) = self.families.get_mut(blanked.as_slice()) {
                    f.merged = Some(root);
                    f.members = Vec::new();
                }
            }
            blanked[i] = key[i];
        }
    }

    fn overflow_template(&mut self, line: &str) -> u32 {
        if let Some(id) = self.overflow {
            return id;
        }
        let id = self.clusters.len() as u32;
        self.clusters.push(Cluster {
            key: Box::new([WILD]),
            size: 0,
            wild_at: vec![true],
            example: line.into(),
            spans: Box::new([(0, line.len() as u32)]),
        });
        self.parent.push(id);
        self.overflow = Some(id);
        id
    }

    /// The template text of a cluster (after merges): its first line with every variable as
    /// `<*>`.
    pub fn template(&self, id: u32) -> String {
        let Some(c) = self.clusters.get(self.resolve(id) as usize) else {
            return String::new();
        };
        let mut out = String::with_capacity(c.example.len());
        let mut at = 0usize;
        for (i, (tok, (a, b))) in c.key.iter().zip(c.spans.iter()).enumerate() {
            let (a, b) = (*a as usize, *b as usize);
            out.push_str(&c.example[at..a]);
            if *tok == WILD || c.wild_at[i] {
                out.push_str("<*>");
            } else {
                out.push_str(&c.example[a..b]);
            }
            at = b;
        }
        out.push_str(&c.example[at..]);
        out
    }

    /// Every template id so far that is not merged into another.
    pub fn templates(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.clusters.len() as u32).filter(|id| self.resolve(*id) == *id)
    }

    /// Distinct words kept (at most `max_templates` × 16).
    pub fn vocabulary(&self) -> usize {
        self.words.len()
    }

    /// Every cluster so far (merged ones have size 0; see [`Miner::resolve`]).
    pub fn clusters(&self) -> &[Cluster] {
        &self.clusters
    }

    /// The words of a key, for tests and diagnostics (`<*>` for values).
    pub fn key_words(&mut self, line: &str) -> Vec<String> {
        self.make_key(line);
        self.key
            .iter()
            .map(|t| {
                if *t == WILD {
                    "<*>".to_string()
                } else if *t == UNSEEN {
                    "<unseen>".to_string()
                } else {
                    self.words[*t as usize].to_string()
                }
            })
            .collect()
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

    fn mine(lines: &[&str]) -> (Miner, Vec<u32>) {
        let mut m = Miner::new(Config::default());
        let ids: Vec<u32> = lines.iter().map(|l| m.add(l)).collect();
        let ids = ids.iter().map(|i| m.resolve(*i)).collect();
        (m, ids)
    }

    /// Every line in one template, rendered as `expected`.
    fn one_template(lines: &[&str], expected: &str) {
        let (m, ids) = mine(lines);
        assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
        assert_eq!(m.template(ids[0]), expected);
    }

    #[test]
    fn values_are_masked_and_separators_kept() {
        let (m, ids) = mine(&[
            "GET /api/orders/48213 status=200 duration_ms=43 request_id=7f3c2a9e-0001",
            "GET /api/orders/11 status=200 duration_ms=7 request_id=00ab-0002",
            "WARN slow call to inventory-svc took 812ms",
        ]);
        assert_eq!(ids[0], ids[1]);
        assert_ne!(ids[0], ids[2]);
        assert_eq!(
            m.template(ids[0]),
            "GET <*> status=<*> duration_ms=<*> request_id=<*>"
        );
    }

    #[test]
    fn a_value_of_several_tokens_or_none_is_one_variable() {
        // An optional size in parentheses, a unit, a time spelled in three tokens.
        one_template(
            &[
                "proxy close, 0 bytes sent, 12 bytes received, lifetime 00:01",
                "proxy close, 1190 bytes (1.16 KB) sent, 1727 bytes (1.68 KB) received, lifetime 00:01",
                "proxy close, 403 bytes sent, 8 bytes (1.68 MB) received, lifetime 02:01",
            ],
            "proxy close, <*> bytes sent, <*> bytes received, lifetime <*>",
        );
    }

    #[test]
    fn a_position_with_many_distinct_words_is_a_variable() {
        one_template(
            &[
                "chrome.exe - proxy.example.org:5070 open through proxy",
                "firefox.exe - proxy.example.org:5070 open through proxy",
                "git.exe - proxy.example.org:5070 open through proxy",
                "Dropbox.exe - proxy.example.org:5070 open through proxy",
                "slack.exe - proxy.example.org:5070 open through proxy",
            ],
            "<*> - proxy.example.org:<*> open through proxy",
        );
    }

    #[test]
    fn few_distinct_words_stay_separate_events() {
        let (_, ids) = mine(&[
            "Disconnecting: Too many authentication failures for root [preauth]",
            "Disconnecting: Too many authentication failures for admin [preauth]",
            "Disconnecting: Too many authentication failures for root [preauth]",
        ]);
        assert_eq!(ids[0], ids[2]);
        assert_ne!(ids[0], ids[1]);
    }

    #[test]
    fn a_word_where_values_also_stand_is_a_value() {
        one_template(
            &[
                "reverse mapping checking getaddrinfo for 191-210-223-172.example.br failed",
                "reverse mapping checking getaddrinfo for ns.example.com failed",
            ],
            "reverse mapping checking getaddrinfo for <*> failed",
        );
    }

    #[test]
    fn variables_by_shape() {
        for v in [
            "42",
            "10.0.0.1:80",
            "7f3c2a9e-0001",
            "12ms",
            "/var/log/app.log",
            "./runtime",
            "C:\\Windows\\x",
            "deadbeefcafe",
            "0xdeadbeef",
            "blk_-69522958",
            "FF:F2:9F:16:E2:23",
            "Sun",
            "Jun",
            "Monday",
        ] {
            assert!(is_variable(v), "{v}");
        }
        for w in [
            "GET",
            "status",
            "inventory-svc",
            "face",
            "/",
            "may",
            "and/or",
        ] {
            assert!(!is_variable(w), "{w}");
        }
    }

    #[test]
    fn a_json_line_keeps_its_words() {
        let mut m = Miner::new(Config::default());
        assert_eq!(
            m.key_words(r#"{"level":"error","ts":"2026-12-01T10:00:00Z","msg":"failed to apply request","took":"3ms"}"#),
            ["level", "error", "ts", "<*>", "msg", "failed", "to", "apply", "request", "took", "<*>"]
        );
    }

    #[test]
    fn glued_values_and_filler_are_split_off() {
        let mut m = Miner::new(Config::default());
        assert_eq!(
            m.key_words("onExtend:1514038530000 14 k=v [x] ciod: time: 0.5"),
            ["onExtend", "<*>", "k", "v", "x", "ciod", "time", "<*>"]
        );
        assert_eq!(
            m.key_words("program interrupt: illegal instruction......0"),
            ["program", "interrupt", "illegal", "instruction", "<*>"]
        );
        assert_eq!(
            m.key_words("Ido chip status changed: FF:F2:9F:16:E2:23 ip=10.0.0.151 v=9"),
            [
                "Ido", "chip", "status", "changed", "<*>", "ip", "<*>", "v", "<*>"
            ]
        );
    }

    #[test]
    fn templates_are_bounded() {
        let mut m = Miner::new(Config {
            distinct: 1000,
            max_templates: 10,
        });
        for i in 0..100u8 {
            let word: String = [b'a' + i % 26, b'a' + i / 26]
                .iter()
                .map(|b| char::from(*b))
                .collect();
            m.add(&format!("event {word} happened"));
        }
        assert!(m.clusters().len() <= 11, "{}", m.clusters().len());
        for i in 0..10_000 {
            m.add(
                &format!("user u{} logged in as w{}x", i * 7919 % 10_007, i)
                    .replace(char::is_numeric, "q"),
            );
            m.add(&format!(
                "session for {}",
                "abcdefghij"
                    .chars()
                    .cycle()
                    .skip(i % 10)
                    .take(3 + i % 7)
                    .collect::<String>()
                    + &"z".repeat(i / 10)
            ));
        }
        assert!(m.vocabulary() <= 10 * 16, "{}", m.vocabulary());
        assert!(m.clusters().len() <= 11, "{}", m.clusters().len());
    }

    #[test]
    fn a_huge_line_costs_a_bounded_key() {
        let mut m = Miner::new(Config::default());
        let long: String = (0..20_000)
            .map(|i| format!("word{} w ", char::from(b'a' + (i % 26) as u8)))
            .collect();
        let a = m.add(&long);
        let b = m.add(&(long.clone() + " extra words at the end"));
        assert_eq!(m.key_words(&long).len(), MAX_KEY + 1);
        assert_eq!(
            a, b,
            "lines equal in their first {MAX_KEY} elements are one template"
        );
        assert!(m.families.is_empty(), "a long key joins no family");
    }

    #[test]
    fn grouping_accuracy_counts_exact_groups() {
        assert_eq!(grouping_accuracy(&[1, 1, 2, 3], &["a", "a", "b", "b"]), 0.5);
        assert_eq!(grouping_accuracy(&[1, 1, 2], &["a", "a", "b"]), 1.0);
    }
}
