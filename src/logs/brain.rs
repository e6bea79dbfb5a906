//! Brain (Yu et al., "Brain: Log Parsing with Bidirectional Parallel Tree", IEEE TSC 2023), as
//! logparser3 1.0.4 implements it (`logparser/Brain/Brain.py`), with one generic preprocessing
//! and one addition: lines that name their own statement are parsed per statement source.
//!
//! The published algorithm, step by step (each step names the reference function it follows):
//!
//! 1. **Preprocessing** (`get_frequecy_vector`): the line is trimmed, three generic masks turn
//!    IP addresses (with a port), hex numbers and standalone numbers into `<*>`, a space is put
//!    after every comma, runs of spaces become one, and the line is split at spaces.
//! 2. **Frequencies**: every token is counted by (position, word) over all lines.
//! 3. **Root** (`tuple_generate`, `tupletree.find_root` with its threshold 0): a line's tokens
//!    carry their frequencies; the frequency value held by the most positions of the line (the
//!    first such value in the line on a tie) and that number of positions are the line's root.
//!    Lines with the same number of tokens and the same root form a group.
//! 4. **Parent direction** (`up_split`): the reference compares a frequency with a token tuple
//!    there, which never holds, so the step changes nothing; it is left out.
//! 5. **Child direction** (`down_split`): in each group, the positions whose frequency in the
//!    group's first line differs from the root's are looked at; where the group's lines hold at
//!    least `threshold` distinct words at such a position, each of those words is a variable,
//!    wherever it stands in the group's lines.
//! 6. **Template** (`output_result`): a variable, a token holding `<*>`, and a token whose
//!    characters are 30% or more digits (`exclude_digits`) print as `<*>`; lines with the same
//!    template are one event.
//!
//! **Online, with bounded memory.** Brain is a batch algorithm: a line's event depends on every
//! line's frequencies. But every step above depends only on the *distinct* preprocessed lines,
//! how often each occurred, and the order in which they were first seen (the group's first
//! line). So [`Brain`] keeps each distinct preprocessed line once with a count: adding a line is
//! one preprocessing and one hash lookup, memory grows with distinct lines, not lines, and
//! [`Brain::settle`] at any time gives exactly the grouping the reference gives for all lines
//! added so far. At most [`Config::max_lines`] distinct lines are kept; lines of further new
//! shapes join one overflow event, which says so.
//!
//! **Statement sources** (the addition; `Config::by_source`). A line that names where it was
//! written — klog's `file.go:N]`, zap's `"caller"`, slog's `source=`, a Java frame, or a Java
//! logger class in a log4j/logback header — belongs to that statement or logger. Lines of
//! different sources are never one event, and Brain runs within each source (frequencies,
//! groups and variables per source), so the words of one statement are judged among lines of
//! that statement only. Its principle and ablation: docs/analysis.md, docs/performance.md.

use regex::Regex;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::LazyLock;

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
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.add(i);
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
type FxSet<K> = std::collections::HashSet<K, BuildHasherDefault<FxHasher>>;

/// The id [`Brain::add`] returns for a line that found no room (see [`Config::max_lines`]).
pub const OVERFLOW: u32 = u32::MAX;

/// Parser settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Config {
    /// Brain's child-direction threshold: distinct words at one position of a group that make
    /// them variables. The reference's default is 2; graygate's default is chosen by
    /// cross-validation across loghub systems (docs/performance.md).
    pub threshold: usize,
    /// Parse lines that name their statement (or logger) per source.
    pub by_source: bool,
    /// Distinct preprocessed lines kept at most.
    pub max_lines: usize,
    /// Mask weekday and month names as values, as the numbers of a date are.
    pub calendar: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            threshold: 6,
            by_source: true,
            max_lines: 200_000,
            calendar: true,
        }
    }
}

impl Config {
    /// The published parser alone: the reference's defaults, no statement sources.
    pub fn reference() -> Self {
        Config {
            threshold: 2,
            by_source: false,
            calendar: false,
            ..Config::default()
        }
    }
}

/// The first generic mask, IP addresses with an optional port, `(/|)([0-9]+\.){3}[0-9]+(:[0-9]+|)(:|)`,
/// replaced by `<*>` left to right as `re.sub` does. Written out by hand because it is the
/// costliest of the masks as a regex; no step of it can backtrack into another way to match.
fn mask_ips(s: &str) -> std::borrow::Cow<'_, str> {
    let c = s.as_bytes();
    let digits = |mut j: usize| {
        while j < c.len() && c[j].is_ascii_digit() {
            j += 1;
        }
        j
    };
    // The end of a match at `i`, if one starts there.
    let at = |i: usize| -> Option<usize> {
        let mut j = i + usize::from(c[i] == b'/');
        for _ in 0..3 {
            let k = digits(j);
            if k == j || c.get(k) != Some(&b'.') {
                return None;
            }
            j = k + 1;
        }
        let k = digits(j);
        if k == j {
            return None;
        }
        j = k;
        if c.get(j) == Some(&b':') && digits(j + 1) > j + 1 {
            j = digits(j + 1);
        }
        if c.get(j) == Some(&b':') {
            j += 1;
        }
        Some(j)
    };
    let mut out: Option<String> = None;
    let (mut i, mut copied) = (0, 0);
    while i < c.len() {
        if !(c[i].is_ascii_digit() || c[i] == b'/') {
            i += 1;
            continue;
        }
        match at(i) {
            Some(end) => {
                let o = out.get_or_insert_with(|| String::with_capacity(s.len()));
                o.push_str(&s[copied..i]);
                o.push_str("<*>");
                i = end;
                copied = end;
            }
            // No match starts later in the same run of digits either: from there the pattern
            // meets the same run's end and the same bytes after it.
            None if c[i].is_ascii_digit() => i = digits(i),
            None => i += 1,
        }
    }
    match out {
        None => std::borrow::Cow::Borrowed(s),
        Some(mut o) => {
            o.push_str(&s[copied..]);
            std::borrow::Cow::Owned(o)
        }
    }
}
/// Weekday and month names, English, abbreviated or whole, capitalised or upper case.
static CALENDAR: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"(?-u:\b)(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun|MON|TUE|WED|THU|FRI|SAT|SUN",
        r"|Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday",
        r"|Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec",
        r"|JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC",
        r"|January|February|March|April|June|July|August|September|October|November|December)(?-u:\b)",
    ))
    .unwrap_or_else(|_| never())
});
static HEX: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"0x[0-9a-fA-F]+").unwrap_or_else(|_| never()));

fn never() -> Regex {
    Regex::new(r"[^\s\S]").unwrap_or_else(|_| std::process::abort())
}

/// The third generic mask, `(?<=[^A-Za-z0-9])(\-?\+?\d+)(?=[^A-Za-z0-9])|[0-9]+$`, replaced by
/// `<*>` left to right as `re.sub` does (Rust's regex has no look-around): a run of digits, with
/// an optional `-` and `+` before it, between two characters that are not ASCII letters or
/// digits; or the digits that end the line. It works on bytes: every character it looks for is
/// ASCII, and a byte of a multi-byte character is neither a letter nor a digit, as the character
/// is not.
fn mask_numbers(s: &str) -> std::borrow::Cow<'_, str> {
    let c = s.as_bytes();
    if !c.iter().any(u8::is_ascii_digit) {
        return std::borrow::Cow::Borrowed(s);
    }
    let n = c.len();
    let alnum = |b: u8| b.is_ascii_alphanumeric();
    // Where the line's closing run of digits starts.
    let tail = n - c.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    let mut out = String::with_capacity(s.len());
    // Bytes from `copied` to `i` are still to be copied.
    let (mut i, mut copied) = (0, 0);
    while i < n {
        if i > 0 && !alnum(c[i - 1]) {
            let mut j = i;
            if c[j] == b'-' {
                j += 1;
            }
            if j < n && c[j] == b'+' {
                j += 1;
            }
            let digits = j;
            while j < n && c[j].is_ascii_digit() {
                j += 1;
            }
            if j > digits && j < n && !alnum(c[j]) {
                out.push_str(&s[copied..i]);
                out.push_str("<*>");
                i = j;
                copied = j;
                continue;
            }
        }
        if i >= tail {
            out.push_str(&s[copied..i]);
            out.push_str("<*>");
            copied = n;
            break;
        }
        i += 1;
    }
    out.push_str(&s[copied..]);
    std::borrow::Cow::Owned(out)
}

/// Step 1 without the split: the masked line with a space after each comma and single spaces.
pub fn preprocess(line: &str, cfg: &Config) -> String {
    let mut out = String::new();
    preprocess_into(line, cfg, &mut out);
    out
}

/// [`preprocess`] into `out` (cleared first).
fn preprocess_into(line: &str, cfg: &Config, out: &mut String) {
    out.clear();
    let s = line.trim();
    let s = if s.contains('.') {
        mask_ips(s)
    } else {
        std::borrow::Cow::Borrowed(s)
    };
    let s = if s.contains("0x") {
        HEX.replace_all(&s, "<*>")
    } else {
        s
    };
    let s = if cfg.calendar {
        CALENDAR.replace_all(&s, "<*>")
    } else {
        s
    };
    let s = mask_numbers(&s);
    // A space after every comma, and single spaces; both are ASCII, so whole runs of other
    // bytes are copied as they are.
    let b = s.as_bytes();
    let (mut copied, mut space) = (0, false);
    for (i, ch) in b.iter().enumerate() {
        match ch {
            b' ' => {
                out.push_str(&s[copied..i]);
                if !space {
                    out.push(' ');
                }
                copied = i + 1;
                space = true;
            }
            b',' => {
                out.push_str(&s[copied..=i]);
                out.push(' ');
                copied = i + 1;
                space = true;
            }
            _ => space = false,
        }
    }
    out.push_str(&s[copied..]);
}

/// Whether 30% or more of a token's characters are digits (the reference's `exclude_digits`).
fn mostly_digits(token: &str) -> bool {
    let (mut digits, mut all) = (0usize, 0usize);
    for c in token.chars() {
        all += 1;
        digits += usize::from(c.is_ascii_digit());
    }
    digits > 0 && digits as f64 / all as f64 >= 0.3
}

/// A Java logger class as log4j's and logback's layouts print it after the level:
/// `INFO [main] org.apache.zookeeper.server.ZooKeeperServer: …`, `WARN o.a.k.c.NetworkClient - …`.
static LOGGER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"(?-u:\b)(?:TRACE|DEBUG|INFO|WARN|WARNING|ERROR|FATAL)(?-u:\b):?(?-u:\s)+(?:\[[^\]]*\](?-u:\s)+)?",
        r"((?:[a-z_][A-Za-z0-9_]*\.)+[A-Z][A-Za-z0-9_$]*)(?::|(?-u:\s)+-)?(?-u:\s)",
    ))
    .unwrap_or_else(|_| never())
});
/// The level words [`LOGGER`] needs, as a cheap first look.
static LEVEL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new("TRACE|DEBUG|INFO|WARN|ERROR|FATAL").unwrap_or_else(|_| never()));
/// The logger a structured line names: JSON `"logger":"…"`, logfmt `logger=…`.
static LOGGER_KEY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?:"logger"\s*:\s*"([^"]+)"|(?:^|\s)logger=("[^"]+"|\S+))"#)
        .unwrap_or_else(|_| never())
});

/// The statement (or logger) a line names as its own, as loggers of several ecosystems write it:
/// a call site (klog, zap, slog, a Java frame; see [`super::detect::call_site`]), else a logger
/// name of a structured line or a Java logger class after the level.
pub fn source_of(line: &str) -> Option<&str> {
    // Each pattern needs a few bytes the line must hold; most lines skip every regex.
    // A call site's `file.ext:N`: a dot, an extension of letters, a colon, a digit.
    let b = line.as_bytes();
    let sited = (1..b.len().saturating_sub(1)).any(|i| {
        b[i] == b':'
            && b[i + 1].is_ascii_digit()
            && b[i - 1].is_ascii_alphabetic()
            && b[i.saturating_sub(7)..i - 1].contains(&b'.')
    });
    if sited && let Some(site) = super::detect::call_site(line) {
        return Some(site);
    }
    if line.contains("logger")
        && let Some(c) = LOGGER_KEY.captures(line)
    {
        return c.get(1).or(c.get(2)).map(|m| m.as_str());
    }
    if !line.contains('.') || !LEVEL.is_match(line) {
        return None;
    }
    LOGGER
        .captures(line)
        .and_then(|c| c.get(1))
        .map(|m| m.as_str())
}

/// A distinct preprocessed line.
struct Line {
    source: u32,
    text: Box<str>,
    count: u64,
}

/// The online parser: add lines, settle when a grouping is needed.
pub struct Brain {
    cfg: Config,
    /// Per source: distinct preprocessed line → its id.
    index: Vec<FxMap<Box<str>, u32>>,
    scratch: String,
    lines: Vec<Line>,
    sources: FxMap<Box<str>, u32>,
    overflowed: u64,
}

/// A settled grouping: every added line's event and every event's template as a person reads
/// it (the event is the reference's template, where every token holding `<*>` is `<*>`; the
/// template shown keeps such a token, `status=<*>`, when all the event's lines agree on it).
pub struct Grouping {
    event_of: Vec<u32>,
    templates: Vec<String>,
    counts: Vec<u64>,
}

impl Grouping {
    /// The event of an id [`Brain::add`] returned.
    pub fn event(&self, id: u32) -> u32 {
        if id == OVERFLOW {
            return (self.templates.len() - 1) as u32;
        }
        self.event_of[id as usize]
    }
    /// An event's template.
    pub fn template(&self, event: u32) -> &str {
        &self.templates[event as usize]
    }
    /// Every event that holds lines.
    pub fn events(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.templates.len() as u32).filter(|e| self.counts[*e as usize] > 0)
    }
}

impl Brain {
    /// A parser with no lines.
    pub fn new(cfg: Config) -> Self {
        Brain {
            cfg,
            index: Vec::new(),
            scratch: String::new(),
            lines: Vec::new(),
            sources: FxMap::default(),
            overflowed: 0,
        }
    }

    /// Add a line; returns its id for [`Grouping::event`].
    pub fn add(&mut self, line: &str) -> u32 {
        let source = match self.cfg.by_source.then(|| source_of(line)).flatten() {
            None => 0,
            Some(s) => match self.sources.get(s) {
                Some(id) => *id,
                None => {
                    let id = self.sources.len() as u32 + 1;
                    self.sources.insert(s.into(), id);
                    id
                }
            },
        };
        // A line seen before costs no allocation: it is preprocessed into a reused buffer.
        let mut text = std::mem::take(&mut self.scratch);
        preprocess_into(line, &self.cfg, &mut text);
        if self.index.len() <= source as usize {
            self.index.resize_with(source as usize + 1, FxMap::default);
        }
        let found = self.index[source as usize].get(text.as_str()).copied();
        let id = match found {
            Some(id) => {
                self.lines[id as usize].count += 1;
                id
            }
            None if self.lines.len() >= self.cfg.max_lines => {
                self.overflowed += 1;
                OVERFLOW
            }
            None => {
                let id = self.lines.len() as u32;
                let kept: Box<str> = text.as_str().into();
                self.lines.push(Line {
                    source,
                    text: kept.clone(),
                    count: 1,
                });
                self.index[source as usize].insert(kept, id);
                id
            }
        };
        self.scratch = text;
        id
    }

    /// Distinct preprocessed lines kept.
    pub fn distinct_lines(&self) -> usize {
        self.lines.len()
    }

    /// The grouping of every line added so far: steps 2 to 6 over the distinct lines.
    pub fn settle(&self) -> Grouping {
        let toks: Vec<Vec<&str>> = self
            .lines
            .iter()
            .map(|l| l.text.split(' ').collect())
            .collect();
        // Step 2: (source, position, word) → lines.
        let mut freq: FxMap<(u32, u32, &str), u64> = FxMap::default();
        for (l, t) in self.lines.iter().zip(&toks) {
            for (p, w) in t.iter().enumerate() {
                *freq.entry((l.source, p as u32, w)).or_default() += l.count;
            }
        }
        let freqs: Vec<Vec<u64>> = self
            .lines
            .iter()
            .zip(&toks)
            .map(|(l, t)| {
                t.iter()
                    .enumerate()
                    .map(|(p, w)| freq[&(l.source, p as u32, *w)])
                    .collect()
            })
            .collect();
        // Step 3: groups by (source, length, root value, positions holding it), lines in the
        // order first seen.
        let mut groups: FxMap<(u32, usize, u64, usize), Vec<usize>> = FxMap::default();
        let mut order: Vec<(u32, usize, u64, usize)> = Vec::new();
        for (i, f) in freqs.iter().enumerate() {
            let mut values: Vec<(u64, usize)> = Vec::new();
            for v in f {
                match values.iter_mut().find(|(x, _)| x == v) {
                    Some(e) => e.1 += 1,
                    None => values.push((*v, 1)),
                }
            }
            // The most positions; the first value in the line on a tie (a stable sort).
            let mut root = values[0];
            for e in &values[1..] {
                if e.1 > root.1 {
                    root = *e;
                }
            }
            let key = (self.lines[i].source, f.len(), root.0, root.1);
            let g = groups.entry(key).or_default();
            if g.is_empty() {
                order.push(key);
            }
            g.push(i);
        }
        // Steps 5 and 6.
        let mut event_of = vec![0u32; self.lines.len()];
        let mut events: FxMap<(u32, String), u32> = FxMap::default();
        let mut shown: Vec<Vec<&str>> = Vec::new();
        let mut counts = Vec::new();
        for key in order {
            let members = &groups[&key];
            let first = &freqs[members[0]];
            let mut variable: FxSet<&str> = FxSet::default();
            for p in (0..key.1).filter(|p| first[*p] != key.2) {
                let words: FxSet<&str> = members.iter().map(|i| toks[*i][p]).collect();
                if words.len() >= self.cfg.threshold {
                    variable.extend(words);
                }
            }
            for i in members {
                let template = toks[*i]
                    .iter()
                    .map(|w| {
                        if variable.contains(w) || w.contains("<*>") || mostly_digits(w) {
                            "<*>"
                        } else {
                            w
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" ");
                let next = shown.len() as u32;
                let e = *events.entry((key.0, template)).or_insert_with(|| {
                    shown.push(Vec::new());
                    counts.push(0);
                    next
                });
                event_of[*i] = e;
                counts[e as usize] += self.lines[*i].count;
                // What a person reads: a masked token (`status=<*>`) where every line of the
                // event has the same one, else `<*>` as in the event's key.
                let read: Vec<&str> = toks[*i]
                    .iter()
                    .map(|w| {
                        if variable.contains(w) || (mostly_digits(w) && !w.contains("<*>")) {
                            "<*>"
                        } else {
                            w
                        }
                    })
                    .collect();
                let words = &mut shown[e as usize];
                if words.is_empty() {
                    *words = read;
                } else {
                    for (have, w) in words.iter_mut().zip(read) {
                        if *have != w {
                            *have = "<*>";
                        }
                    }
                }
            }
        }
        let mut templates: Vec<String> = shown.into_iter().map(|w| w.join(" ")).collect();
        templates.push(format!(
            "<{} lines of new shapes past the parser's {} distinct lines>",
            self.overflowed, self.cfg.max_lines
        ));
        counts.push(self.overflowed);
        Grouping {
            event_of,
            templates,
            counts,
        }
    }
}

/// Grouping accuracy: a line is correct when the set of lines in its group equals the set of
/// lines sharing its ground-truth event id.
pub fn grouping_accuracy<P: std::hash::Hash + Eq, T: std::hash::Hash + Eq>(
    predicted: &[P],
    truth: &[T],
) -> f64 {
    let mut by_pred: HashMap<&P, Vec<usize>> = HashMap::new();
    let mut by_truth: HashMap<&T, Vec<usize>> = HashMap::new();
    for (i, (p, t)) in predicted.iter().zip(truth).enumerate() {
        by_pred.entry(p).or_default().push(i);
        by_truth.entry(t).or_default().push(i);
    }
    let mut correct = 0usize;
    for lines in by_pred.values() {
        let t = &truth[lines[0]];
        if by_truth.get(t).is_some_and(|tl| tl == lines) {
            correct += lines.len();
        }
    }
    correct as f64 / predicted.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(lines: &[&str], cfg: Config) -> (Grouping, Vec<u32>) {
        let mut b = Brain::new(cfg);
        let ids: Vec<u32> = lines.iter().map(|l| b.add(l)).collect();
        let g = b.settle();
        let events = ids.iter().map(|i| g.event(*i)).collect();
        (g, events)
    }

    #[test]
    fn the_masks_follow_the_reference_regexes() {
        for (line, masked) in [
            ("from 10.0.0.7:5432 at 0x7fA9", "from <*> at <*>"),
            (
                "/10.0.0.7: 1.2.3 1.2.3.4.5.6.7.8 a1.2.3.4:x",
                "<*> <*>.<*>.<*> <*>.<*> a<*>x",
            ),
            ("x/1.2.3.4:80: y /a 1.2.3.4:", "x<*> y /a <*>"),
            (
                "took 812 ms, -5 and +3 left",
                "took <*> ms, <*> and <*> left",
            ),
            (
                "blk_-1608 x-5 a12 12b size 2048",
                "blk_<*> x-<*> a12 12b size <*>",
            ),
            ("size 2048", "size <*>"),
            ("abc123", "abc<*>"),
            ("ab12c34", "ab12c<*>"),
            ("12 starts", "12 starts"),
            ("(42)", "(<*>)"),
            ("a,b  ,c", "a, b , c"),
            ("  padded   words  ", "padded words"),
        ] {
            assert_eq!(preprocess(line, &Config::reference()), masked, "{line}");
        }
    }

    #[test]
    fn a_group_splits_words_by_the_child_threshold() {
        // Four lines of one length; "state" words at position 2 are rare (1 each) beside the
        // common words (4): with threshold 4 they are a variable, with 5 they are not.
        let lines = [
            "node is normal now",
            "node is warning now",
            "node is critical now",
            "node is running now",
        ];
        let (g, ids) = parse(
            &lines,
            Config {
                threshold: 4,
                ..Config::reference()
            },
        );
        assert!(ids.iter().all(|i| *i == ids[0]));
        assert_eq!(g.template(ids[0]), "node is <*> now");
        let (_, ids) = parse(
            &lines,
            Config {
                threshold: 5,
                ..Config::reference()
            },
        );
        let distinct: FxSet<u32> = ids.into_iter().collect();
        assert_eq!(distinct.len(), 4);
    }

    #[test]
    fn duplicate_lines_do_not_change_the_grouping() {
        let lines = ["a b 1", "a c 2", "a d 3", "x y", "a b 1", "a b 1"];
        let (_, once) = parse(&lines[..4], Config::reference());
        let (_, again) = parse(&lines, Config::reference());
        assert_eq!(&again[..4], &once[..]);
        assert_eq!(again[4], once[0]);
    }

    #[test]
    fn lines_of_different_sources_are_never_one_event() {
        let lines = [
            "I1206 10:00:00.000001 1 a.go:10] synced",
            "I1206 10:00:00.000002 1 b.go:20] synced",
        ];
        let (_, ids) = parse(&lines, Config::default());
        assert_ne!(ids[0], ids[1]);
        assert_eq!(
            source_of("2026-12-06 10:00:00,001 - INFO  [main:org.apache.Foo@12] - x"),
            None
        );
        assert_eq!(
            source_of(
                "2015-10-18 18:01:47,978 INFO [main] org.apache.hadoop.mapreduce.v2.app.MRAppMaster: Created"
            ),
            Some("org.apache.hadoop.mapreduce.v2.app.MRAppMaster")
        );
        assert_eq!(
            source_of(r#"{"logger":"shop.cart","msg":"x"}"#),
            Some("shop.cart")
        );
    }

    #[test]
    fn the_overflow_is_one_event_that_says_so() {
        let mut b = Brain::new(Config {
            max_lines: 2,
            ..Config::reference()
        });
        let ids: Vec<u32> = ["a", "b", "c", "d"].iter().map(|l| b.add(l)).collect();
        let g = b.settle();
        assert_eq!(ids[2], OVERFLOW);
        assert_eq!(g.event(ids[2]), g.event(ids[3]));
        assert!(
            g.template(g.event(ids[2]))
                .starts_with("<2 lines of new shapes")
        );
    }
}
