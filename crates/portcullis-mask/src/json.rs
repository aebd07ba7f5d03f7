//! Streaming masking of JSON documents: HTTP response bodies as they pass.
//!
//! A [`JsonMasker`] reads a JSON document — or a stream of them, whitespace-separated as in
//! NDJSON / JSON Lines — in chunks of any size, and writes the same bytes back except for the
//! values it masks: whitespace, formatting, keys, numbers and clean strings are copied as they
//! came (with their original escapes), in runs as long as the chunk. A value split across
//! chunks is held until it is complete, so the output never depends on where the chunks
//! were cut. Object keys are never masked.
//!
//! A [`JsonPolicy`] says what is masked: string values at [`JsonPath`]s (`$.user.email`,
//! `$.items[*].card`, `$..ssn`) with a [`Strategy`] each, and every other string value by
//! what the [`Masker`]'s detectors find in it (after JSON unescaping; the result is escaped
//! again). Numbers and booleans under a rule become `null`; numbers whose value is a whole
//! number of 12 to 19 digits, however spelt (`4111111111111111.0`, `4.111111111111111e15`,
//! negative), are given to the detectors as those digits (a card number sent as a number
//! becomes `null`).
//!
//! Memory is bounded by [`JsonLimits`] (the longest string or number, 1 MiB by default; the
//! deepest nesting, 512). Invalid JSON is a [`JsonError`] with its byte offset, a document cut
//! short one at [`JsonMasker::finish`]; after an error the masker refuses everything, so the
//! caller ends the response rather than pass the rest unmasked.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use portcullis_mask::{Detectors, JsonMasker, JsonPolicy, Kind, Masker, Strategy};
//!
//! let policy = JsonPolicy::new(Masker::new(Detectors::all(), Strategy::Partial))
//!     .rule("$.items[*].ssn", Strategy::Redact)?
//!     .rule("$..token", Strategy::Null)?;
//! let mut json = JsonMasker::new(Arc::new(policy));
//! let mut out = Vec::new();
//! // Chunks may be cut anywhere, even inside a value or an escape.
//! json.feed(br#"{"items": [{"ssn": "123-45-6789", "note": "mail ja"#, &mut out)?;
//! json.feed(br#"ne@example.com \u00e9"}], "token": "abc", "id": 42}"#, &mut out)?;
//! json.finish(&mut out)?;
//! assert_eq!(
//!     String::from_utf8(out)?,
//!     r#"{"items": [{"ssn": "[redacted]", "note": "mail j***@example.com é"}], "token": null, "id": 42}"#
//! );
//! let stats = json.stats();
//! assert_eq!(stats.values, 3);
//! assert_eq!(stats.kinds.get(&Kind::Email), Some(&1));
//! assert_eq!(stats.paths.get("$..token"), Some(&1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use crate::detect::{Finding, Kind};
use crate::mask::{Masked, Masker, Strategy};

// ---- paths ---------------------------------------------------------------------------------

/// A path for a rule.
///
/// A path starts with `$`, the top-level value (of each document in a stream), followed by
/// steps:
///
/// | step | selects |
/// |------|---------|
/// | `.name` | the member `name` of an object |
/// | `['name']`, `["name"]` | the same, for names with `.`, `[` or `]` (`\` escapes the next character) |
/// | `.*`, `[*]` | every member of an object and every element of an array |
/// | `[3]` | the element at index 3 of an array |
/// | `..name`, `..*`, `..[…]` | the same selections at any depth below: `$..email` is every member `email`, however deep, `$.email` included |
///
/// An unquoted name may hold the globs `*` (any characters) and `?` (one character), as
/// column rules do: `$..*_token`. Names are compared with the keys after JSON unescaping
/// (`"e\u006dail"` is `email`).
///
/// ```
/// use portcullis_mask::JsonPath;
///
/// for path in ["$", "$.user.email", "$.items[*].card", "$.data[0].ssn", "$..password", "$['x.y'].z", "$..*_token"] {
///     assert!(JsonPath::parse(path).is_ok(), "{path}");
/// }
/// assert_eq!(JsonPath::parse("$.items[").unwrap_err().position, 8);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath {
    text: String,
    steps: Vec<Step>,
}

/// A path could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid JSON path {path:?} at {position}: {message}")]
pub struct JsonPathError {
    /// The path.
    pub path: String,
    /// Byte offset in the path where reading failed.
    pub position: usize,
    /// What was expected.
    pub message: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Step {
    /// `..`: at any depth below.
    descendant: bool,
    select: Select,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Select {
    Name(Box<[u8]>),
    Glob(Box<[u8]>),
    Any,
    Index(u64),
}

/// A member's key (unescaped) or an element's index.
#[derive(Debug, Clone, Copy)]
enum Child<'a> {
    Key(&'a [u8]),
    Index(u64),
}

impl Select {
    fn matches(&self, child: Child<'_>) -> bool {
        match (self, child) {
            (Select::Any, _) => true,
            (Select::Name(name), Child::Key(key)) => **name == *key,
            (Select::Glob(pattern), Child::Key(key)) => glob(pattern, key),
            (Select::Index(n), Child::Index(i)) => *n == i,
            _ => false,
        }
    }
}

impl JsonPath {
    /// Read a path: `$.a.b`, `$.items[*].email`, `$..email`, `$['a.b'][0]`.
    pub fn parse(text: &str) -> Result<Self, JsonPathError> {
        let b = text.as_bytes();
        let err = |position: usize, message: &'static str| JsonPathError {
            path: text.to_owned(),
            position,
            message,
        };
        if b.first() != Some(&b'$') {
            return Err(err(0, "a path starts with `$`"));
        }
        let mut steps = Vec::new();
        let mut i = 1;
        while i < b.len() {
            let mut descendant = false;
            match b[i] {
                b'.' => {
                    i += 1;
                    if b.get(i) == Some(&b'.') {
                        descendant = true;
                        i += 1;
                    }
                    if !(descendant && b.get(i) == Some(&b'[')) {
                        let start = i;
                        while i < b.len() && !matches!(b[i], b'.' | b'[' | b']') {
                            i += 1;
                        }
                        let name = &b[start..i];
                        let select = if name.is_empty() {
                            return Err(err(start, "expected a name or `*`"));
                        } else if name == b"*" {
                            Select::Any
                        } else if name.iter().any(|&c| c == b'*' || c == b'?') {
                            Select::Glob(name.into())
                        } else {
                            Select::Name(name.into())
                        };
                        steps.push(Step { descendant, select });
                        continue;
                    }
                }
                b'[' => {}
                _ => return Err(err(i, "expected `.` or `[`")),
            }
            // A bracket: `[*]`, `[3]`, `['name']`.
            i += 1;
            let select = match b.get(i) {
                Some(b'*') => {
                    i += 1;
                    Select::Any
                }
                Some(b'0'..=b'9') => {
                    let mut n: u64 = 0;
                    while let Some(&d @ b'0'..=b'9') = b.get(i) {
                        n = n
                            .checked_mul(10)
                            .and_then(|n| n.checked_add(u64::from(d - b'0')))
                            .ok_or_else(|| err(i, "index too large"))?;
                        i += 1;
                    }
                    Select::Index(n)
                }
                Some(&quote @ (b'\'' | b'"')) => {
                    i += 1;
                    let mut name = Vec::new();
                    loop {
                        match b.get(i) {
                            None => return Err(err(i, "unterminated quoted name")),
                            Some(&c) if c == quote => {
                                i += 1;
                                break;
                            }
                            Some(b'\\') => match b.get(i + 1) {
                                Some(&c) => {
                                    name.push(c);
                                    i += 2;
                                }
                                None => return Err(err(i, "unterminated quoted name")),
                            },
                            Some(&c) => {
                                name.push(c);
                                i += 1;
                            }
                        }
                    }
                    Select::Name(name.into())
                }
                _ => return Err(err(i, "expected `*`, an index or a quoted name")),
            };
            if b.get(i) != Some(&b']') {
                return Err(err(i, "expected `]`"));
            }
            i += 1;
            steps.push(Step { descendant, select });
        }
        Ok(JsonPath {
            text: text.to_owned(),
            steps,
        })
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl FromStr for JsonPath {
    type Err = JsonPathError;
    fn from_str(s: &str) -> Result<Self, JsonPathError> {
        JsonPath::parse(s)
    }
}

impl std::fmt::Display for JsonPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// `pattern` (`*` any characters, `?` one character) over all of `text`, without allocating.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let char_len = |at: usize| {
        1 + text[at + 1..]
            .iter()
            .take(3)
            .take_while(|&&b| b & 0xC0 == 0x80)
            .count()
    };
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < text.len() {
        match pattern.get(pi) {
            Some(b'*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(b'?') => {
                pi += 1;
                ti += char_len(ti);
            }
            Some(&c) if c == text[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    let next = st + char_len(st);
                    pi = sp + 1;
                    ti = next;
                    star = Some((sp, next));
                }
                None => return false,
            },
        }
    }
    pattern[pi..].iter().all(|&c| c == b'*')
}

/// The rules' paths as one automaton: state `s` has matched the first steps of a rule;
/// `steps[s]` leads to `s + 1`; a rule's last state is its end.
#[derive(Debug, Clone, Default)]
struct Compiled {
    /// Per state: the step leaving it (`None`: the rule's end).
    steps: Vec<Option<Step>>,
    /// Per state: the rule it ends.
    ends: Vec<Option<usize>>,
    /// Each rule's first state, in order.
    starts: Vec<usize>,
    /// The first rule that is `$` itself.
    root: Option<usize>,
}

impl Compiled {
    fn new(rules: &[(JsonPath, Strategy)]) -> Self {
        let mut c = Compiled::default();
        for (r, (path, _)) in rules.iter().enumerate() {
            c.starts.push(c.steps.len());
            for step in &path.steps {
                c.steps.push(Some(step.clone()));
                c.ends.push(None);
            }
            c.steps.push(None);
            c.ends.push(Some(r));
            if path.steps.is_empty() && c.root.is_none() {
                c.root = Some(r);
            }
        }
        c
    }

    /// The states of a child of a value whose states are `states[from..to]`, appended to
    /// `states` (sorted, without duplicates); the first rule the child ends, if any.
    fn step(
        &self,
        states: &mut Vec<usize>,
        from: usize,
        to: usize,
        child: Child<'_>,
    ) -> Option<usize> {
        let mut rule: Option<usize> = None;
        for k in from..to {
            let s = states[k];
            let Some(Some(step)) = self.steps.get(s) else {
                continue;
            };
            let push = |states: &mut Vec<usize>, s: usize| {
                if states.len() == to || states.last() != Some(&s) {
                    states.push(s);
                }
            };
            if step.descendant {
                push(states, s);
            }
            if step.select.matches(child) {
                push(states, s + 1);
                if let Some(Some(r)) = self.ends.get(s + 1) {
                    rule = Some(rule.map_or(*r, |best| best.min(*r)));
                }
            }
        }
        rule
    }
}

// ---- policy, limits, errors, statistics ------------------------------------------------------

/// What to mask in JSON: path rules, and a [`Masker`] for content detection. Built once and
/// shared (in an [`Arc`]) by every [`JsonMasker`].
///
/// * **Path rules** — a [`JsonPath`] and a [`Strategy`]. A string under a rule is masked
///   whole with [`Masker::mask_whole`] (`redact` → `"[redacted]"`, `partial` → the detector's
///   partial form or all but the last four characters starred, `hash` → `"tok_…"`, `null` →
///   `null`). A number or a boolean under a rule cannot keep its type masked: it becomes
///   `null`, whatever the strategy (as a number column does in result rows); `null` stays.
///   A rule that matches an object or an array applies to every string, number and boolean
///   inside it. The nearest match applies — a rule matching the value itself before one
///   matching a container around it — and among rules matching the same value, the first in
///   the order given.
/// * **Content detection** — every other string value is unescaped (`\uXXXX` escapes and
///   surrogate pairs decoded; a lone surrogate reads as U+FFFD) and given to the masker; what
///   it finds is masked (`"contact jane@example.com"` → `"contact j***@example.com"`) and the
///   result written back as a JSON string, escaped minimally (`"`, `\`, control characters).
///   A detector whose strategy is `null` turns the whole string into `null`. Numbers are not
///   scanned, except those whose value is a whole number of 12 to 19 digits, however spelt (a
///   card number sent as a number, `4111111111111111.0`, `4.111111111111111e15`): when the
///   detectors find something in those digits, the number becomes `null`. Keys are never
///   scanned.
#[derive(Debug, Clone)]
pub struct JsonPolicy {
    masker: Masker,
    rules: Vec<(JsonPath, Strategy)>,
    detect_only: bool,
    compiled: Compiled,
}

impl JsonPolicy {
    /// Content detection with `masker`, no path rules. (To apply path rules only, give a
    /// masker over `Detectors::new(&[], Vec::new())`.)
    pub fn new(masker: Masker) -> Self {
        JsonPolicy {
            masker,
            rules: Vec::new(),
            detect_only: false,
            compiled: Compiled::default(),
        }
    }

    /// Add a rule: values at `path` are masked with `strategy`. Of the rules matching the
    /// same value, the first added applies (a rule matching the value itself wins over one
    /// matching a container around it).
    pub fn with_rule(mut self, path: JsonPath, strategy: Strategy) -> Self {
        self.rules.push((path, strategy));
        self.compiled = Compiled::new(&self.rules);
        self
    }

    /// Add a rule from the path's text.
    pub fn rule(self, path: &str, strategy: Strategy) -> Result<Self, JsonPathError> {
        Ok(self.with_rule(JsonPath::parse(path)?, strategy))
    }

    /// Count what would be masked, change nothing (`mode = "detect"`).
    pub fn detect_only(mut self, yes: bool) -> Self {
        self.detect_only = yes;
        self
    }

    /// Whether this policy only counts.
    pub fn is_detect_only(&self) -> bool {
        self.detect_only
    }

    /// The masker for content detection.
    pub fn masker(&self) -> &Masker {
        &self.masker
    }

    /// The path rules, in order.
    pub fn rules(&self) -> &[(JsonPath, Strategy)] {
        &self.rules
    }
}

/// Bounds on what a [`JsonMasker`] holds: past them the input is refused
/// ([`JsonErrorKind::TooLong`], [`JsonErrorKind::TooDeep`]), whatever the chunking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonLimits {
    /// The longest string or number, in bytes as written (escapes included).
    pub max_string: usize,
    /// The deepest nesting of objects and arrays.
    pub max_depth: usize,
}

impl JsonLimits {
    /// 1 MiB.
    pub const DEFAULT_MAX_STRING: usize = 1 << 20;
    /// 512 levels.
    pub const DEFAULT_MAX_DEPTH: usize = 512;
}

impl Default for JsonLimits {
    fn default() -> Self {
        JsonLimits {
            max_string: Self::DEFAULT_MAX_STRING,
            max_depth: Self::DEFAULT_MAX_DEPTH,
        }
    }
}

/// The input could not be masked: invalid JSON, or over a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{kind} at byte {offset}")]
pub struct JsonError {
    /// Byte offset in the stream (from the first byte fed since the start or the last
    /// successful [`JsonMasker::finish`]) where it was found: the offending byte, or the
    /// start of the value over a limit, or the end of a cut document.
    pub offset: u64,
    /// What.
    pub kind: JsonErrorKind,
}

/// What a [`JsonError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JsonErrorKind {
    /// Not JSON: what was expected there.
    #[error("invalid JSON: {0}")]
    Syntax(&'static str),
    /// A backslash escape that JSON does not have (or a short `\u`).
    #[error("invalid JSON: a bad escape in a string")]
    Escape,
    /// A raw control character (below U+0020) in a string.
    #[error("invalid JSON: a control character in a string")]
    ControlCharacter,
    /// A string that is not UTF-8.
    #[error("invalid JSON: a string that is not UTF-8")]
    Utf8,
    /// A string or number longer than the limit.
    #[error("a string or number longer than {limit} bytes")]
    TooLong {
        /// The limit ([`JsonLimits::max_string`]).
        limit: usize,
    },
    /// Nesting deeper than the limit.
    #[error("nesting deeper than {limit} levels")]
    TooDeep {
        /// The limit ([`JsonLimits::max_depth`]).
        limit: usize,
    },
    /// The input ended inside a document.
    #[error("the JSON document ends early")]
    Truncated,
}

fn error(offset: u64, kind: JsonErrorKind) -> JsonError {
    JsonError { offset, kind }
}

/// What a [`JsonMasker`] masked, for the audit trail (as the masking layer counts values,
/// detector kinds and columns).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JsonStats {
    /// Values masked (or, in detect mode, that would have been).
    pub values: u64,
    /// Findings per detector kind.
    pub kinds: BTreeMap<Kind, u64>,
    /// Values masked per path rule, by the rule's path.
    pub paths: BTreeMap<String, u64>,
}

impl JsonStats {
    /// Whether nothing was masked.
    pub fn is_empty(&self) -> bool {
        self.values == 0
    }

    /// The decision detail the masking layer records (`masked 3 value(s); detectors:
    /// email=2; paths: $..ssn=1`), or `None` when nothing was masked.
    pub fn detail(&self, detect_only: bool) -> Option<String> {
        if self.values == 0 {
            return None;
        }
        let list = |items: Vec<String>| {
            if items.is_empty() {
                "-".to_owned()
            } else {
                items.join(", ")
            }
        };
        let kinds = self
            .kinds
            .iter()
            .map(|(k, n)| format!("{}={n}", k.name()))
            .collect();
        let paths = self.paths.iter().map(|(p, n)| format!("{p}={n}")).collect();
        let verb = if detect_only {
            "would mask (mode = detect)"
        } else {
            "masked"
        };
        Some(format!(
            "{verb} {} value(s); detectors: {}; paths: {}",
            self.values,
            list(kinds),
            list(paths)
        ))
    }
}

// ---- the masker ----------------------------------------------------------------------------

/// What the parser expects next (whitespace aside).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A value (top level, after `:`, after `,` in an array).
    Value,
    /// A value or `]` (after `[`).
    FirstValue,
    /// A key or `}` (after `{`).
    FirstKey,
    /// A key (after `,` in an object).
    Key,
    /// `:`.
    Colon,
    /// `,` or the container's end.
    CommaOrEnd,
}

/// An open object or array.
#[derive(Debug, Clone, Copy)]
struct Frame {
    object: bool,
    /// Its path states: `states[set_start..set_end]`.
    set_start: usize,
    set_end: usize,
    /// The rule that matched it or a container around it: what is inside and matches no
    /// rule itself is masked by that rule.
    forced: Option<usize>,
    /// The next element's index (arrays).
    index: u64,
}

/// What the scan of a string has seen so far.
#[derive(Debug, Clone, Copy, Default)]
struct StrScan {
    /// The last byte was a backslash (the next one is escaped).
    escape: bool,
    has_escape: bool,
    /// A byte above ASCII (UTF-8 to check).
    high: bool,
}

/// A value cut by the end of a chunk (its bytes so far in `held`).
#[derive(Debug, Clone, Copy)]
enum Partial {
    Str {
        key: bool,
        scan: StrScan,
        start: u64,
    },
    Number {
        start: u64,
    },
    Literal {
        start: u64,
    },
}

/// Masks a stream of JSON as it passes, as its [`JsonPolicy`] says.
///
/// One per response body; the policy is shared. Feed the body's chunks in order with
/// [`feed`](Self::feed), then call [`finish`](Self::finish). Everything that is not a masked
/// value is copied unchanged; a value cut by a chunk's end is held until it is complete, so
/// the output is the same whatever the chunking. A stream may hold several documents
/// separated by whitespace (NDJSON); an empty stream is not an error
/// ([`documents`](Self::documents) counts them). After a successful `finish` the masker is
/// ready for another stream (statistics keep adding up until
/// [`take_stats`](Self::take_stats)).
///
/// ```
/// use std::sync::Arc;
/// use portcullis_mask::{Detectors, JsonErrorKind, JsonMasker, JsonPolicy, Masker, Strategy};
///
/// let policy = Arc::new(JsonPolicy::new(Masker::new(Detectors::all(), Strategy::Redact)));
/// let mut json = JsonMasker::new(policy.clone());
/// let mut out = Vec::new();
/// json.feed(b"{\"m\":\"jane@example.com\"}\n{\"m\":\"no", &mut out)?;
/// assert_eq!(out, b"{\"m\":\"[email]\"}\n{\"m\":", "the cut value is held");
/// json.feed(b"ne\"}\n", &mut out)?;
/// json.finish(&mut out)?;
/// assert_eq!(out, b"{\"m\":\"[email]\"}\n{\"m\":\"none\"}\n");
/// assert_eq!(json.documents(), 2);
///
/// // A document cut short is an error at `finish`.
/// let mut json = JsonMasker::new(policy);
/// json.feed(b"[1, 2", &mut Vec::new())?;
/// assert_eq!(json.finish(&mut Vec::new()).unwrap_err().kind, JsonErrorKind::Truncated);
/// # Ok::<(), portcullis_mask::JsonError>(())
/// ```
#[derive(Debug)]
pub struct JsonMasker {
    policy: Arc<JsonPolicy>,
    limits: JsonLimits,
    expect: Expect,
    stack: Vec<Frame>,
    /// Path automaton states: the top level's, then each open container's, then the next
    /// value's.
    states: Vec<usize>,
    /// The next value's rule, and where its states start (they run to the end of `states`).
    ctx_rule: Option<usize>,
    ctx_start: usize,
    partial: Option<Partial>,
    /// The bytes of a value cut by a chunk's end (a string from its opening quote).
    held: Vec<u8>,
    /// The stream offset of the current chunk.
    offset: u64,
    failed: Option<JsonError>,
    documents: u64,
    unescaped: Vec<u8>,
    replacement: Vec<u8>,
    scratch: Vec<Finding>,
    values: u64,
    kinds: BTreeMap<Kind, u64>,
    rule_counts: Vec<u64>,
}

impl JsonMasker {
    /// A masker for one stream, with the default [`JsonLimits`].
    pub fn new(policy: Arc<JsonPolicy>) -> Self {
        JsonMasker::with_limits(policy, JsonLimits::default())
    }

    /// A masker for one stream, with `limits`.
    pub fn with_limits(policy: Arc<JsonPolicy>, limits: JsonLimits) -> Self {
        let states = policy.compiled.starts.clone();
        let rule_counts = vec![0; policy.rules.len()];
        JsonMasker {
            policy,
            limits,
            expect: Expect::Value,
            stack: Vec::new(),
            states,
            ctx_rule: None,
            ctx_start: 0,
            partial: None,
            held: Vec::new(),
            offset: 0,
            failed: None,
            documents: 0,
            unescaped: Vec::new(),
            replacement: Vec::new(),
            scratch: Vec::new(),
            values: 0,
            kinds: BTreeMap::new(),
            rule_counts,
        }
    }

    /// Read `chunk`, append the masked output to `out`. A value cut by the chunk's end is
    /// held (and written once complete). On an error nothing of this chunk is written, and
    /// every later call fails with the same error.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), JsonError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let mark = out.len();
        match self.run(chunk, out) {
            Ok(()) => {
                self.offset += chunk.len() as u64;
                Ok(())
            }
            Err(e) => {
                out.truncate(mark);
                self.failed = Some(e);
                Err(e)
            }
        }
    }

    /// The input has ended: write what was held (a number at the very end), and fail if a
    /// document is incomplete. On success the masker is ready for a new stream.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), JsonError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let mark = out.len();
        match self.end(out) {
            Ok(()) => {
                self.expect = Expect::Value;
                self.stack.clear();
                self.states.truncate(self.policy.compiled.starts.len());
                self.offset = 0;
                Ok(())
            }
            Err(e) => {
                out.truncate(mark);
                self.failed = Some(e);
                Err(e)
            }
        }
    }

    /// Top-level values read completely so far (documents of an NDJSON stream).
    pub fn documents(&self) -> u64 {
        self.documents
    }

    /// What was masked so far.
    pub fn stats(&self) -> JsonStats {
        let mut paths = BTreeMap::new();
        for ((path, _), n) in self.policy.rules.iter().zip(&self.rule_counts) {
            if *n > 0 {
                *paths.entry(path.text.clone()).or_default() += *n;
            }
        }
        JsonStats {
            values: self.values,
            kinds: self.kinds.clone(),
            paths,
        }
    }

    /// What was masked so far; the counts start again from zero.
    pub fn take_stats(&mut self) -> JsonStats {
        let stats = self.stats();
        self.values = 0;
        self.kinds.clear();
        self.rule_counts.iter_mut().for_each(|n| *n = 0);
        stats
    }

    fn end(&mut self, out: &mut Vec<u8>) -> Result<(), JsonError> {
        let held_value = match self.partial.take() {
            None => None,
            Some(Partial::Str { .. }) => return Err(error(self.offset, JsonErrorKind::Truncated)),
            Some(Partial::Number { start }) => Some((true, start)),
            Some(Partial::Literal { start }) => Some((false, start)),
        };
        if let Some((number, start)) = held_value {
            // A number or literal ended by the end of the input.
            let held = std::mem::take(&mut self.held);
            let replaced = self.scalar(&held, number, start);
            if let Ok(replaced) = replaced {
                out.extend_from_slice(if replaced { &self.replacement } else { &held });
                self.value_done();
            }
            self.held = held;
            replaced?;
        }
        if self.stack.is_empty() {
            Ok(())
        } else {
            Err(error(self.offset, JsonErrorKind::Truncated))
        }
    }

    fn run(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), JsonError> {
        let n = chunk.len();
        if n == 0 {
            return Ok(());
        }
        let (mut i, mut flushed) = (0, 0);
        if let Some(partial) = self.partial.take() {
            let mut held = std::mem::take(&mut self.held);
            let resumed = self.resume(partial, &mut held, chunk, out);
            self.held = held;
            match resumed? {
                Some((next, from)) => (i, flushed) = (next, from),
                None => return Ok(()),
            }
        }
        while i < n {
            let b = chunk[i];
            if matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
                i += 1;
                continue;
            }
            let at = self.offset + i as u64;
            let next = match self.expect {
                Expect::Value | Expect::FirstValue => match b {
                    b'"' => {
                        self.begin_value();
                        self.string(chunk, i, false, out, &mut flushed)?
                    }
                    b'{' | b'[' => {
                        self.begin_value();
                        self.open(b == b'{', at)?;
                        Some(i + 1)
                    }
                    b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => {
                        self.begin_value();
                        self.bare(chunk, i, out, &mut flushed)?
                    }
                    b']' if self.expect == Expect::FirstValue => {
                        self.close(false, at)?;
                        Some(i + 1)
                    }
                    _ => return Err(error(at, JsonErrorKind::Syntax("expected a value"))),
                },
                Expect::FirstKey | Expect::Key => match b {
                    b'"' => self.member(chunk, i, out, &mut flushed)?,
                    b'}' if self.expect == Expect::FirstKey => {
                        self.close(true, at)?;
                        Some(i + 1)
                    }
                    _ => return Err(error(at, JsonErrorKind::Syntax("expected a key"))),
                },
                Expect::Colon if b == b':' => {
                    self.expect = Expect::Value;
                    Some(i + 1)
                }
                Expect::Colon => return Err(error(at, JsonErrorKind::Syntax("expected `:`"))),
                Expect::CommaOrEnd => match b {
                    b',' if self.stack.last().is_some_and(|f| f.object) => {
                        self.expect = Expect::Key;
                        // Most often the next key follows at once.
                        let j = skip_whitespace(chunk, i + 1);
                        if chunk.get(j) == Some(&b'"') {
                            self.member(chunk, j, out, &mut flushed)?
                        } else {
                            Some(j)
                        }
                    }
                    b',' => {
                        self.expect = Expect::Value;
                        Some(i + 1)
                    }
                    b'}' | b']' => {
                        self.close(b == b'}', at)?;
                        Some(i + 1)
                    }
                    _ => {
                        return Err(error(
                            at,
                            JsonErrorKind::Syntax("expected `,` or the end of the object or array"),
                        ));
                    }
                },
            };
            match next {
                Some(next) => i = next,
                // The rest of the chunk is held.
                None => return Ok(()),
            }
        }
        out.extend_from_slice(&chunk[flushed..]);
        Ok(())
    }

    /// Continue the value cut by the last chunk: `(where to go on, what is not yet
    /// written)`, or `None` when all of `chunk` was held too.
    fn resume(
        &mut self,
        partial: Partial,
        held: &mut Vec<u8>,
        chunk: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Option<(usize, usize)>, JsonError> {
        let n = chunk.len();
        let limit = self.limits.max_string;
        match partial {
            Partial::Str {
                key,
                mut scan,
                start,
            } => {
                // `held` is the opening quote and at most `limit` bytes.
                let so_far = held.len().saturating_sub(1);
                let window = (limit - so_far.min(limit)).saturating_add(1).min(n);
                match scan_string(&chunk[..window], &mut scan) {
                    Err(p) => Err(error(
                        self.offset + p as u64,
                        JsonErrorKind::ControlCharacter,
                    )),
                    Ok(Some(p)) => {
                        held.extend_from_slice(&chunk[..p]);
                        let raw = &held[1..];
                        if key {
                            self.key_done(raw, scan, start + 1)?;
                            out.extend_from_slice(held);
                            return Ok(Some((p + 1, p)));
                        }
                        let replaced = self.string_value(raw, scan, start + 1)?;
                        self.value_done();
                        if replaced {
                            out.extend_from_slice(&self.replacement);
                            Ok(Some((p + 1, p + 1)))
                        } else {
                            out.extend_from_slice(held);
                            Ok(Some((p + 1, p)))
                        }
                    }
                    Ok(None) if so_far + window > limit => {
                        Err(error(start, JsonErrorKind::TooLong { limit }))
                    }
                    Ok(None) => {
                        held.extend_from_slice(chunk);
                        self.partial = Some(Partial::Str { key, scan, start });
                        Ok(None)
                    }
                }
            }
            Partial::Number { start } | Partial::Literal { start } => {
                let number = matches!(partial, Partial::Number { .. });
                let (cap, too_long) = if number {
                    (limit, JsonErrorKind::TooLong { limit })
                } else {
                    (5, JsonErrorKind::Syntax("invalid literal"))
                };
                let mut j = 0;
                while j < n && bare_byte(number, chunk[j]) {
                    j += 1;
                    if held.len() + j > cap {
                        return Err(error(start, too_long));
                    }
                }
                held.extend_from_slice(&chunk[..j]);
                if j == n {
                    self.partial = Some(partial);
                    return Ok(None);
                }
                let replaced = self.scalar(held, number, start)?;
                out.extend_from_slice(if replaced { &self.replacement } else { held });
                self.value_done();
                self.delimited(chunk[j], self.offset + j as u64)?;
                Ok(Some((j, j)))
            }
        }
    }

    /// An object member whose key's opening quote is at `chunk[i]`: the key, and when they
    /// follow in this chunk the `:` and a string value — the common run read without going
    /// back to the main loop. Where to go on, or `None` when the rest of the chunk is held.
    fn member(
        &mut self,
        chunk: &[u8],
        i: usize,
        out: &mut Vec<u8>,
        flushed: &mut usize,
    ) -> Result<Option<usize>, JsonError> {
        let Some(j) = self.string(chunk, i, true, out, flushed)? else {
            return Ok(None);
        };
        let j = skip_whitespace(chunk, j);
        if chunk.get(j) != Some(&b':') {
            return Ok(Some(j));
        }
        self.expect = Expect::Value;
        let j = skip_whitespace(chunk, j + 1);
        if chunk.get(j) == Some(&b'"') {
            self.begin_value();
            return self.string(chunk, j, false, out, flushed);
        }
        Ok(Some(j))
    }

    /// The string whose opening quote is at `chunk[i]`: where to go on, or `None` when it is
    /// held to the end of the chunk.
    fn string(
        &mut self,
        chunk: &[u8],
        i: usize,
        key: bool,
        out: &mut Vec<u8>,
        flushed: &mut usize,
    ) -> Result<Option<usize>, JsonError> {
        let n = chunk.len();
        let limit = self.limits.max_string;
        let body = i + 1;
        // The closing quote must come within `limit` bytes.
        let window_end = body.saturating_add(limit).saturating_add(1).min(n);
        let mut scan = StrScan::default();
        match scan_string(&chunk[body..window_end], &mut scan) {
            Err(p) => Err(error(
                self.offset + (body + p) as u64,
                JsonErrorKind::ControlCharacter,
            )),
            Ok(Some(p)) => {
                let end = body + p;
                let raw = &chunk[body..end];
                let at = self.offset + body as u64;
                if key {
                    self.key_done(raw, scan, at)?;
                } else {
                    if self.string_value(raw, scan, at)? {
                        out.extend_from_slice(&chunk[*flushed..i]);
                        out.extend_from_slice(&self.replacement);
                        *flushed = end + 1;
                    }
                    self.value_done();
                }
                Ok(Some(end + 1))
            }
            Ok(None) if window_end - body > limit => Err(error(
                self.offset + i as u64,
                JsonErrorKind::TooLong { limit },
            )),
            Ok(None) => {
                out.extend_from_slice(&chunk[*flushed..i]);
                *flushed = n;
                self.held.clear();
                self.held.extend_from_slice(&chunk[i..]);
                self.partial = Some(Partial::Str {
                    key,
                    scan,
                    start: self.offset + i as u64,
                });
                Ok(None)
            }
        }
    }

    /// A number or a literal starting at `chunk[i]`.
    fn bare(
        &mut self,
        chunk: &[u8],
        i: usize,
        out: &mut Vec<u8>,
        flushed: &mut usize,
    ) -> Result<Option<usize>, JsonError> {
        let n = chunk.len();
        let limit = self.limits.max_string;
        let start = self.offset + i as u64;
        let number = !matches!(chunk[i], b't' | b'f' | b'n');
        let (cap, too_long) = if number {
            (limit, JsonErrorKind::TooLong { limit })
        } else {
            (5, JsonErrorKind::Syntax("invalid literal"))
        };
        let mut j = i;
        while j < n && bare_byte(number, chunk[j]) {
            j += 1;
            if j - i > cap {
                return Err(error(start, too_long));
            }
        }
        if j == n {
            out.extend_from_slice(&chunk[*flushed..i]);
            *flushed = n;
            self.held.clear();
            self.held.extend_from_slice(&chunk[i..]);
            self.partial = Some(if number {
                Partial::Number { start }
            } else {
                Partial::Literal { start }
            });
            return Ok(None);
        }
        if self.scalar(&chunk[i..j], number, start)? {
            out.extend_from_slice(&chunk[*flushed..i]);
            out.extend_from_slice(&self.replacement);
            *flushed = j;
        }
        self.value_done();
        self.delimited(chunk[j], self.offset + j as u64)?;
        Ok(Some(j))
    }

    /// After a number or literal at the top level, only whitespace may follow.
    fn delimited(&self, next: u8, at: u64) -> Result<(), JsonError> {
        if self.stack.is_empty() && !matches!(next, b' ' | b'\n' | b'\r' | b'\t') {
            return Err(error(
                at,
                JsonErrorKind::Syntax("expected whitespace after a top-level value"),
            ));
        }
        Ok(())
    }

    /// A value starts: find its rule (object members have theirs from their key).
    fn begin_value(&mut self) {
        let Some(top) = self.stack.last_mut() else {
            let compiled = &self.policy.compiled;
            self.states.truncate(compiled.starts.len());
            self.ctx_start = 0;
            self.ctx_rule = compiled.root;
            return;
        };
        if top.object {
            return;
        }
        let index = top.index;
        top.index += 1;
        let frame = *top;
        self.ctx_rule = enter(
            &self.policy.compiled,
            &mut self.states,
            &frame,
            Child::Index(index),
        );
        self.ctx_start = frame.set_end;
    }

    fn open(&mut self, object: bool, at: u64) -> Result<(), JsonError> {
        if self.stack.len() >= self.limits.max_depth {
            return Err(error(
                at,
                JsonErrorKind::TooDeep {
                    limit: self.limits.max_depth,
                },
            ));
        }
        self.stack.push(Frame {
            object,
            set_start: self.ctx_start,
            set_end: self.states.len(),
            forced: self.ctx_rule,
            index: 0,
        });
        self.expect = if object {
            Expect::FirstKey
        } else {
            Expect::FirstValue
        };
        Ok(())
    }

    fn close(&mut self, object: bool, at: u64) -> Result<(), JsonError> {
        match self.stack.pop() {
            Some(frame) if frame.object == object => {
                self.value_done();
                Ok(())
            }
            _ => Err(error(
                at,
                JsonErrorKind::Syntax("mismatched closing bracket"),
            )),
        }
    }

    fn value_done(&mut self) {
        if self.stack.is_empty() {
            self.documents += 1;
            self.expect = Expect::Value;
        } else {
            self.expect = Expect::CommaOrEnd;
        }
    }

    /// A complete key (`raw`, between the quotes, at stream offset `at`).
    fn key_done(&mut self, raw: &[u8], scan: StrScan, at: u64) -> Result<(), JsonError> {
        check_utf8(raw, scan.high, at)?;
        let key: &[u8] = if scan.has_escape {
            unescape(raw, &mut self.unescaped)
                .map_err(|p| error(at + p as u64, JsonErrorKind::Escape))?;
            &self.unescaped
        } else {
            raw
        };
        let Some(frame) = self.stack.last().copied() else {
            return Err(error(at, JsonErrorKind::Syntax("a key outside an object")));
        };
        self.ctx_rule = enter(
            &self.policy.compiled,
            &mut self.states,
            &frame,
            Child::Key(key),
        );
        self.ctx_start = frame.set_end;
        self.expect = Expect::Colon;
        Ok(())
    }

    /// A complete string value: whether it is replaced (by `self.replacement`).
    fn string_value(&mut self, raw: &[u8], scan: StrScan, at: u64) -> Result<bool, JsonError> {
        check_utf8(raw, scan.high, at)?;
        let value: &[u8] = if scan.has_escape {
            unescape(raw, &mut self.unescaped)
                .map_err(|p| error(at + p as u64, JsonErrorKind::Escape))?;
            &self.unescaped
        } else {
            raw
        };
        let policy = &*self.policy;
        let masked = match self.ctx_rule {
            Some(r) => {
                let strategy = policy.rules.get(r).map_or(Strategy::Redact, |(_, s)| *s);
                if let Some(n) = self.rule_counts.get_mut(r) {
                    *n += 1;
                }
                policy.masker.mask_whole(value, strategy)
            }
            None => policy
                .masker
                .mask(value, &mut self.scratch, &mut self.kinds),
        };
        if matches!(masked, Masked::Clean) {
            return Ok(false);
        }
        self.values += 1;
        if policy.detect_only {
            return Ok(false);
        }
        self.replacement.clear();
        match masked {
            Masked::Rewritten(v) => write_string(&v, &mut self.replacement),
            _ => self.replacement.extend_from_slice(b"null"),
        }
        Ok(true)
    }

    /// A complete number or literal: whether it is replaced (by `null`).
    fn scalar(&mut self, raw: &[u8], number: bool, at: u64) -> Result<bool, JsonError> {
        if number {
            validate_number(raw)
                .map_err(|p| error(at + p as u64, JsonErrorKind::Syntax("invalid number")))?;
        } else if !matches!(raw, b"true" | b"false" | b"null") {
            return Err(error(at, JsonErrorKind::Syntax("invalid literal")));
        }
        let masked = match self.ctx_rule {
            _ if raw == b"null" => false,
            Some(r) => {
                if let Some(n) = self.rule_counts.get_mut(r) {
                    *n += 1;
                }
                true
            }
            // A card number sent as a number, however it is spelt (`4111111111111111.0`,
            // `4.111111111111111e15`).
            None => {
                number
                    && integral_digits(raw).is_some_and(|digits| {
                        (12..=19).contains(&digits.len())
                            && !matches!(
                                self.policy.masker.mask(
                                    digits.as_bytes(),
                                    &mut self.scratch,
                                    &mut self.kinds
                                ),
                                Masked::Clean
                            )
                    })
            }
        };
        if !masked {
            return Ok(false);
        }
        self.values += 1;
        if self.policy.detect_only {
            return Ok(false);
        }
        self.replacement.clear();
        self.replacement.extend_from_slice(b"null");
        Ok(true)
    }
}

/// A valid JSON number's value as the digits of a whole number (sign dropped), when it is one
/// of at most 40 digits: `4.111111111111111e15` and `4111111111111111.0` are
/// `4111111111111111`; `1.5` and `1e100` are not.
pub(crate) fn integral_digits(raw: &[u8]) -> Option<String> {
    let raw = raw.strip_prefix(b"-").unwrap_or(raw);
    let (mantissa, exp) = match raw.iter().position(|&b| b == b'e' || b == b'E') {
        Some(i) => {
            let e = std::str::from_utf8(&raw[i + 1..]).ok()?;
            let e: i64 = e.strip_prefix('+').unwrap_or(e).parse().ok()?;
            (&raw[..i], e)
        }
        None => (raw, 0),
    };
    if !(-64..=64).contains(&exp) {
        return None;
    }
    let (int, frac) = match mantissa.iter().position(|&b| b == b'.') {
        Some(i) => (&mantissa[..i], &mantissa[i + 1..]),
        None => (mantissa, &b""[..]),
    };
    let digits: Vec<u8> = int.iter().chain(frac).copied().collect();
    let point = usize::try_from(i64::try_from(int.len()).ok()? + exp).ok()?;
    let mut whole: Vec<u8> = if point >= digits.len() {
        let mut w = digits;
        w.resize(point, b'0');
        w
    } else {
        if digits[point..].iter().any(|&d| d != b'0') {
            return None;
        }
        digits[..point].to_vec()
    };
    let zeros = whole.iter().take_while(|&&d| d == b'0').count();
    whole.drain(..zeros.min(whole.len().saturating_sub(1)));
    if whole.is_empty() || whole.len() > 40 {
        return None;
    }
    String::from_utf8(whole).ok()
}

/// The states and rule of a child of `frame`, computed into `states` after the frame's: the
/// rule the child itself matches, else the one of the container.
#[inline(always)]
fn enter(
    compiled: &Compiled,
    states: &mut Vec<usize>,
    frame: &Frame,
    child: Child<'_>,
) -> Option<usize> {
    states.truncate(frame.set_end);
    if frame.set_start == frame.set_end {
        return frame.forced;
    }
    compiled
        .step(states, frame.set_start, frame.set_end, child)
        .or(frame.forced)
}

fn skip_whitespace(chunk: &[u8], mut i: usize) -> usize {
    while chunk
        .get(i)
        .is_some_and(|b| matches!(b, b' ' | b'\n' | b'\r' | b'\t'))
    {
        i += 1;
    }
    i
}

/// A byte of a number (`number`) or of a literal.
fn bare_byte(number: bool, b: u8) -> bool {
    if number {
        matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
    } else {
        b.is_ascii_lowercase()
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `w` that is `"`, `\` or a control character — exact up to
/// the first such byte (the borrows that may set bits above it come from it).
fn stops(w: u64) -> u64 {
    let quote = w ^ (ONES * u64::from(b'"'));
    let backslash = w ^ (ONES * u64::from(b'\\'));
    let zero_quote = quote.wrapping_sub(ONES) & !quote;
    let zero_backslash = backslash.wrapping_sub(ONES) & !backslash;
    let control = w.wrapping_sub(ONES * 0x20) & !w;
    (zero_quote | zero_backslash | control) & HIGHS
}

/// Scan string content for its closing quote: `Ok(Some(at))`, `Ok(None)` when `b` ends
/// first, `Err(at)` at a raw control character. Plain bytes are skipped eight at a time.
#[inline(always)]
fn scan_string(b: &[u8], st: &mut StrScan) -> Result<Option<usize>, usize> {
    let mut i = 0;
    if st.escape {
        let Some(&e) = b.first() else {
            return Ok(None);
        };
        st.escape = false;
        st.high |= e >= 0x80;
        i = 1;
    }
    loop {
        // Eight bytes at a time to the first byte that is not plain.
        while let Some(word) = b.get(i..).and_then(<[u8]>::first_chunk::<8>) {
            let w = u64::from_le_bytes(*word);
            let stop = stops(w);
            if stop == 0 {
                st.high |= w & HIGHS != 0;
                i += 8;
                continue;
            }
            let k = stop.trailing_zeros() / 8;
            st.high |= w & HIGHS & ((1u64 << (k * 8)) - 1) != 0;
            i += k as usize;
            break;
        }
        // A byte at a time (the special byte found, or the last few).
        loop {
            let Some(&c) = b.get(i) else {
                return Ok(None);
            };
            match c {
                b'"' => return Ok(Some(i)),
                b'\\' => {
                    st.has_escape = true;
                    match b.get(i + 1) {
                        Some(&e) => {
                            st.high |= e >= 0x80;
                            i += 2;
                            break;
                        }
                        None => {
                            st.escape = true;
                            return Ok(None);
                        }
                    }
                }
                0..=0x1f => return Err(i),
                _ => {
                    st.high |= c >= 0x80;
                    i += 1;
                }
            }
        }
    }
}

fn check_utf8(raw: &[u8], high: bool, at: u64) -> Result<(), JsonError> {
    if high && let Err(e) = std::str::from_utf8(raw) {
        return Err(error(at + e.valid_up_to() as u64, JsonErrorKind::Utf8));
    }
    Ok(())
}

/// A JSON number's grammar; `Err` at the first wrong byte.
fn validate_number(raw: &[u8]) -> Result<(), usize> {
    let digits = |mut i: usize| {
        while raw.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    };
    let mut i = usize::from(raw.first() == Some(&b'-'));
    match raw.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits(i),
        _ => return Err(i),
    }
    if raw.get(i) == Some(&b'.') {
        let after = digits(i + 1);
        if after == i + 1 {
            return Err(after);
        }
        i = after;
    }
    if matches!(raw.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(raw.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let after = digits(i);
        if after == i {
            return Err(after);
        }
        i = after;
    }
    if i == raw.len() { Ok(()) } else { Err(i) }
}

fn hex4(raw: &[u8], at: usize) -> Option<u32> {
    let h = raw.get(at..at + 4)?;
    h.iter().try_fold(0u32, |acc, &c| {
        let d = char::from(c).to_digit(16)?;
        Some(acc * 16 + d)
    })
}

/// A JSON string's content (between the quotes) unescaped into `out` (UTF-8; lone
/// surrogates as U+FFFD); `Err` at a bad escape.
fn unescape(raw: &[u8], out: &mut Vec<u8>) -> Result<(), usize> {
    out.clear();
    let (mut i, mut run) = (0, 0);
    while let Some(p) = raw[i..].iter().position(|&b| b == b'\\') {
        let at = i + p;
        out.extend_from_slice(&raw[run..at]);
        let simple = match raw.get(at + 1) {
            Some(b'"') => b'"',
            Some(b'\\') => b'\\',
            Some(b'/') => b'/',
            Some(b'b') => 0x08,
            Some(b'f') => 0x0c,
            Some(b'n') => b'\n',
            Some(b'r') => b'\r',
            Some(b't') => b'\t',
            Some(b'u') => {
                let unit = hex4(raw, at + 2).ok_or(at)?;
                i = at + 6;
                let code = match unit {
                    0xD800..=0xDBFF => match (raw.get(i..i + 2), hex4(raw, i + 2)) {
                        (Some(b"\\u"), Some(low @ 0xDC00..=0xDFFF)) => {
                            i += 6;
                            0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                        }
                        _ => 0xFFFD,
                    },
                    0xDC00..=0xDFFF => 0xFFFD,
                    _ => unit,
                };
                let c = char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER);
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                run = i;
                continue;
            }
            _ => return Err(at),
        };
        out.push(simple);
        i = at + 2;
        run = i;
    }
    out.extend_from_slice(&raw[run..]);
    Ok(())
}

/// `v` (UTF-8) as a JSON string, escaping only what must be (`"`, `\\`, control
/// characters); plain runs are found eight bytes at a time and copied whole.
fn write_string(v: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(v.len() + 2);
    out.push(b'"');
    let (mut i, mut run) = (0, 0);
    while i < v.len() {
        if let Some(word) = v[i..].first_chunk::<8>() {
            let stop = stops(u64::from_le_bytes(*word));
            if stop == 0 {
                i += 8;
                continue;
            }
            i += (stop.trailing_zeros() / 8) as usize;
        }
        let b = v[i];
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&v[run..i]);
        if short.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(short);
        }
        i += 1;
        run = i;
    }
    out.extend_from_slice(&v[run..]);
    out.push(b'"');
}

#[cfg(test)]
mod number_tests {
    use super::integral_digits;

    #[test]
    fn whole_numbers_are_read_however_they_are_spelt() {
        for (raw, want) in [
            ("4111111111111111", Some("4111111111111111")),
            ("4111111111111111.0", Some("4111111111111111")),
            ("4.111111111111111e15", Some("4111111111111111")),
            ("4.111111111111111E+15", Some("4111111111111111")),
            ("41111111111111110e-1", Some("4111111111111111")),
            ("-4111111111111111", Some("4111111111111111")),
            ("0", Some("0")),
            ("0.0", Some("0")),
            ("1e3", Some("1000")),
            ("1.5", None),
            ("1e100", None),
            ("0.5e1", Some("5")),
            ("5e-1", None),
        ] {
            assert_eq!(integral_digits(raw.as_bytes()).as_deref(), want, "{raw}");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::fmt::Write as _;

    use proptest::prelude::{Just, any, prop_assert, prop_assert_eq, prop_oneof, proptest};
    use proptest::sample::Index;
    use proptest::strategy::Strategy as Gen;
    use serde_json::Value;

    use super::*;
    use crate::scan::Detectors;

    fn policy(rules: &[(&str, Strategy)]) -> Arc<JsonPolicy> {
        let mut p = JsonPolicy::new(Masker::new(Detectors::all(), Strategy::Partial));
        for (path, strategy) in rules {
            p = p.rule(path, *strategy).unwrap();
        }
        Arc::new(p)
    }

    /// `input` fed in pieces cut at `cuts` (ascending), then finished.
    fn run_cuts(
        policy: &Arc<JsonPolicy>,
        input: &[u8],
        cuts: &[usize],
        limits: JsonLimits,
    ) -> Result<Vec<u8>, JsonError> {
        let mut m = JsonMasker::with_limits(policy.clone(), limits);
        let mut out = Vec::new();
        let mut from = 0;
        for &cut in cuts {
            m.feed(&input[from..cut], &mut out)?;
            from = cut;
        }
        m.feed(&input[from..], &mut out)?;
        m.finish(&mut out)?;
        Ok(out)
    }

    /// The result of `input` in one piece, after checking that every cut in two, and byte
    /// by byte, gives the same (errors included).
    fn invariant(
        policy: &Arc<JsonPolicy>,
        input: &[u8],
        limits: JsonLimits,
    ) -> Result<Vec<u8>, JsonError> {
        let whole = run_cuts(policy, input, &[], limits);
        for cut in 0..=input.len() {
            assert_eq!(
                run_cuts(policy, input, &[cut], limits),
                whole,
                "cut at {cut} of {:?}",
                String::from_utf8_lossy(input)
            );
        }
        let every: Vec<usize> = (1..input.len()).collect();
        assert_eq!(
            run_cuts(policy, input, &every, limits),
            whole,
            "byte by byte"
        );
        whole
    }

    fn mask(policy: &Arc<JsonPolicy>, input: &str) -> String {
        let out = invariant(policy, input.as_bytes(), JsonLimits::default()).unwrap();
        let text = String::from_utf8(out).unwrap();
        // Valid JSON in, valid JSON out.
        for doc in serde_json::Deserializer::from_str(&text).into_iter::<Value>() {
            doc.unwrap_or_else(|e| panic!("invalid output {text:?}: {e}"));
        }
        text
    }

    fn fails(policy: &Arc<JsonPolicy>, input: &[u8], limits: JsonLimits) -> JsonError {
        match invariant(policy, input, limits) {
            Ok(out) => panic!(
                "{:?} passed as {:?}",
                String::from_utf8_lossy(input),
                String::from_utf8_lossy(&out)
            ),
            Err(e) => e,
        }
    }

    #[test]
    fn emails_inside_text_and_clean_values_untouched() {
        let p = policy(&[]);
        assert_eq!(
            mask(
                &p,
                r#"{"note": "contact jane.doe@example.com today", "n": 42}"#
            ),
            r#"{"note": "contact j***@example.com today", "n": 42}"#
        );
        let clean = "{\n  \"name\" : \"Jane Doe\",\n  \"tags\": [ \"a\" , \"b\" ],\t\"n\": -1.5e3,\n  \"ok\": true, \"nil\": null, \"e\": {}, \"a\": []\n}\n";
        assert_eq!(mask(&p, clean), clean, "formatting kept byte for byte");
        assert_eq!(
            mask(
                &p,
                r#"["4242 4242 4242 4242", "order 4242 4242 4242 4241", "ssn 123-45-6789"]"#
            ),
            r#"["**** **** **** 4242", "order 4242 4242 4242 4241", "ssn ***-**-6789"]"#
        );
    }

    #[test]
    fn nested_objects_and_arrays() {
        let p = policy(&[]);
        assert_eq!(
            mask(
                &p,
                r#"{"a":{"b":[{"c":["x","mail a.b@example.org"]},[[["+1 415-555-0132"]]]]},"d":[]}"#
            ),
            r#"{"a":{"b":[{"c":["x","mail a***@example.org"]},[[["+* ***-***-**32"]]]]},"d":[]}"#
        );
    }

    #[test]
    fn path_rules() {
        let p = policy(&[
            ("$.items[*].email", Strategy::Redact),
            ("$.user.name", Strategy::Partial),
            ("$.items[1].city", Strategy::Null),
            ("$['odd.key'][\"b\"]", Strategy::Redact),
            ("$..*_token", Strategy::Null),
        ]);
        let input = r#"{"items":[{"email":"x","city":"Lyon"},{"email":"y","city":"Paris"}],
            "email":"top","user":{"name":"Jane Doe-Smith","id":7},"odd.key":{"b":"v","c":"w"},
            "deep":[{"auth":{"refresh_token":"abc","token":"def"}}]}"#;
        assert_eq!(
            mask(&p, input),
            r#"{"items":[{"email":"[redacted]","city":"Lyon"},{"email":"[redacted]","city":null}],
            "email":"top","user":{"name":"**** *****mith","id":7},"odd.key":{"b":"[redacted]","c":"w"},
            "deep":[{"auth":{"refresh_token":null,"token":"def"}}]}"#
        );
    }

    #[test]
    fn descendant_rules_at_any_depth() {
        let p = policy(&[("$..email", Strategy::Redact)]);
        assert_eq!(
            mask(
                &p,
                r#"{"email":"a","x":[{"email":"b"},[{"y":{"email":"c","e":"d"}}]],"emails":"e"}"#
            ),
            r#"{"email":"[redacted]","x":[{"email":"[redacted]"},[{"y":{"email":"[redacted]","e":"d"}}]],"emails":"e"}"#
        );
        // Nested arrays by index and wildcard.
        let p = policy(&[
            ("$.m[*][1]", Strategy::Null),
            ("$..[0].k", Strategy::Redact),
        ]);
        assert_eq!(
            mask(
                &p,
                r#"{"m":[["a","b"],["c","d","e"]],"z":[{"k":"v"},{"k":"w"}]}"#
            ),
            r#"{"m":[["a",null],["c",null,"e"]],"z":[{"k":"[redacted]"},{"k":"w"}]}"#
        );
    }

    #[test]
    fn a_rule_on_a_container_masks_everything_inside() {
        let p = policy(&[
            ("$.user", Strategy::Redact),
            ("$.user.tags[1].b", Strategy::Null),
        ]);
        assert_eq!(
            mask(
                &p,
                r#"{"user":{"name":"Jane","age":41,"vip":true,"gone":null,"tags":["a",{"b":"c","d":"e"}]},"x":"y"}"#
            ),
            r#"{"user":{"name":"[redacted]","age":null,"vip":null,"gone":null,"tags":["[redacted]",{"b":null,"d":"[redacted]"}]},"x":"y"}"#,
            "the nearest rule applies"
        );
        let p = policy(&[
            ("$", Strategy::Null),
            ("$.a", Strategy::Redact),
            ("$..a", Strategy::Partial),
        ]);
        assert_eq!(
            mask(&p, r#"{"a":["x",{"a":"jane@example.com"}],"b":"y"}"#),
            r#"{"a":["[redacted]",{"a":"j***@example.com"}],"b":null}"#,
            "the first of the rules matching the same value"
        );
        let p = policy(&[("$", Strategy::Null)]);
        assert_eq!(mask(&p, r#"{"a":"b","c":[1]}"#), r#"{"a":null,"c":[null]}"#);
    }

    #[test]
    fn numbers_and_booleans() {
        let p = policy(&[("$.id", Strategy::Redact), ("$.flags[*]", Strategy::Hash)]);
        assert_eq!(
            mask(
                &p,
                r#"{"id":12345,"n":12,"card":4242424242424242,"order":4242424242424241,"neg":-4242424242424242,"f":1.5e10,"flags":[true,false,null,0]}"#
            ),
            r#"{"id":null,"n":12,"card":null,"order":4242424242424241,"neg":null,"f":1.5e10,"flags":[null,null,null,null]}"#
        );
        // A card number however the number is spelt.
        assert_eq!(
            mask(
                &policy(&[]),
                r#"[4242424242424242.0,4.242424242424242e15,42424242424242420E-1,4.242424242424241e15]"#
            ),
            r#"[null,null,null,4.242424242424241e15]"#
        );
        // A number at the very end of the input, held until `finish`.
        let p = policy(&[("$", Strategy::Redact)]);
        assert_eq!(mask(&p, "123"), "null");
        assert_eq!(mask(&p, "1 2\n3"), "null null\nnull");
        assert_eq!(mask(&policy(&[]), "4242424242424242"), "null");
    }

    #[test]
    fn strategies_on_strings() {
        let m = Masker::new(Detectors::all(), Strategy::Partial)
            .with_hash_key(b"0123456789abcdef0123")
            .unwrap()
            .with_strategy(Kind::UsSsn, Strategy::Null);
        let p = Arc::new(
            JsonPolicy::new(m)
                .rule("$.h", Strategy::Hash)
                .unwrap()
                .rule("$.n", Strategy::Null)
                .unwrap()
                .rule("$.p", Strategy::Partial)
                .unwrap(),
        );
        let out = mask(
            &p,
            r#"{"h":"jane@example.com","n":"x","p":"jane@example.com","s":"ssn 123-45-6789"}"#,
        );
        let v: Value = serde_json::from_str(&out).unwrap();
        assert!(v["h"].as_str().unwrap().starts_with("tok_"), "{out}");
        assert_eq!(v["n"], Value::Null);
        assert_eq!(v["p"], "j***@example.com");
        assert_eq!(v["s"], Value::Null, "a detector with the null strategy");
    }

    #[test]
    fn escapes_unicode_and_surrogates() {
        let p = policy(&[("$.email", Strategy::Redact)]);
        // Keys are compared unescaped.
        assert_eq!(
            mask(&p, r#"{"e\u006dail":"x","\"q\"":"y"}"#),
            r#"{"e\u006dail":"[redacted]","\"q\"":"y"}"#
        );
        let p = policy(&[]);
        // An escaped `@` is still an e-mail; the masked value is written back escaped
        // minimally.
        assert_eq!(
            mask(&p, r#"["jane\u0040example.com"]"#),
            r#"["j***@example.com"]"#
        );
        // Unchanged strings keep their escapes, byte for byte.
        let clean = r#"["caf\u00e9 \ud83d\ude00 \/ \" \\ \n \t \u0000", "caf\u00c9", "😀 é"]"#;
        assert_eq!(mask(&p, clean), clean);
        // A surrogate pair and a lone surrogate in a masked value.
        assert_eq!(
            mask(
                &p,
                r#"["\ud83d\ude00 jane@example.com", "\ud800 jane@example.com \udc00x"]"#
            ),
            "[\"\u{1F600} j***@example.com\", \"\u{FFFD} j***@example.com \u{FFFD}x\"]"
        );
        // Control characters, quotes and backslashes re-escaped.
        assert_eq!(
            mask(&p, r#"["line\njane@example.com\t\"q\" \\ \u0001 \b\f\r"]"#),
            r#"["line\nj***@example.com\t\"q\" \\ \u0001 \b\f\r"]"#
        );
        // Multi-byte UTF-8 around a finding, cut anywhere by the chunking.
        assert_eq!(
            mask(&p, r#"["日本語 jane@example.com ünï"]"#),
            r#"["日本語 j***@example.com ünï"]"#
        );
    }

    #[test]
    fn ndjson_and_concatenated_documents() {
        let p = policy(&[("$.ssn", Strategy::Redact)]);
        let input = "{\"ssn\":\"a\",\"m\":\"jane@example.com\"}\n{\"ssn\":\"b\"}\r\n[\"x\"]\n\"jane@example.com\"\n12 true null\n{}{}[]\n";
        assert_eq!(
            mask(&p, input),
            "{\"ssn\":\"[redacted]\",\"m\":\"j***@example.com\"}\n{\"ssn\":\"[redacted]\"}\r\n[\"x\"]\n\"j***@example.com\"\n12 true null\n{}{}[]\n"
        );
        let mut m = JsonMasker::new(p.clone());
        let mut out = Vec::new();
        m.feed(input.as_bytes(), &mut out).unwrap();
        m.finish(&mut out).unwrap();
        assert_eq!(m.documents(), 10);
        // Empty input: no document, no error.
        assert_eq!(mask(&p, ""), "");
        assert_eq!(mask(&p, " \n"), " \n");
    }

    #[test]
    fn counts_what_was_masked() {
        let p = policy(&[("$..ssn", Strategy::Redact), ("$.id", Strategy::Null)]);
        let mut m = JsonMasker::new(p.clone());
        let mut out = Vec::new();
        m.feed(
            br#"[{"ssn":"1","id":1,"m":"a@example.com b@example.com","c":4242424242424242},{"ssn":"2"}]"#,
            &mut out,
        )
        .unwrap();
        m.finish(&mut out).unwrap();
        let stats = m.stats();
        assert_eq!(stats.values, 4, "{stats:?}");
        assert_eq!(stats.kinds.get(&Kind::Email), Some(&2));
        assert_eq!(stats.kinds.get(&Kind::CreditCard), Some(&1));
        assert_eq!(stats.paths.get("$..ssn"), Some(&2));
        assert_eq!(
            stats.paths.get("$.id"),
            None,
            "`$.id` is not at the top level here"
        );
        assert_eq!(
            stats.detail(false).unwrap(),
            "masked 4 value(s); detectors: email=2, credit_card=1; paths: $..ssn=2"
        );
        assert_eq!(m.take_stats(), stats);
        assert!(m.stats().is_empty() && m.stats().detail(false).is_none());

        // Detect mode: counted, nothing changed.
        let p = Arc::new(
            JsonPolicy::new(Masker::new(Detectors::all(), Strategy::Partial))
                .rule("$.a", Strategy::Redact)
                .unwrap()
                .detect_only(true),
        );
        let input = r#"{"a":"x","b":"jane@example.com","c":4242424242424242}"#;
        let mut m = JsonMasker::new(p.clone());
        let mut out = Vec::new();
        m.feed(input.as_bytes(), &mut out).unwrap();
        m.finish(&mut out).unwrap();
        assert_eq!(out, input.as_bytes());
        assert_eq!(m.stats().values, 3);
        assert!(m.stats().detail(true).unwrap().starts_with("would mask"));
    }

    #[test]
    fn limits() {
        let p = policy(&[]);
        let limits = JsonLimits {
            max_string: 8,
            max_depth: 3,
        };
        // Exactly at the limit passes; one byte more fails at the string's start, whatever
        // the chunking (`invariant` checks).
        assert!(invariant(&p, br#"["12345678"]"#, limits).is_ok());
        assert_eq!(
            fails(&p, br#"["123456789"]"#, limits),
            error(1, JsonErrorKind::TooLong { limit: 8 })
        );
        assert_eq!(
            fails(&p, br#"{"123456789":1}"#, limits),
            error(1, JsonErrorKind::TooLong { limit: 8 }),
            "keys too"
        );
        assert!(invariant(&p, br#"["\u00e9\""]"#, limits).is_ok());
        assert_eq!(
            fails(&p, br#"["\u00e9\"x"]"#, limits),
            error(1, JsonErrorKind::TooLong { limit: 8 }),
            "escapes count as written"
        );
        assert_eq!(
            fails(&p, b"[123456789]", limits),
            error(1, JsonErrorKind::TooLong { limit: 8 })
        );
        assert_eq!(
            fails(&p, b"[\"123456789", limits),
            error(1, JsonErrorKind::TooLong { limit: 8 }),
            "over the limit before the end"
        );
        assert!(invariant(&p, b"[[[1]]]", limits).is_ok());
        assert_eq!(
            fails(&p, b"[[[[1]]]]", limits),
            error(3, JsonErrorKind::TooDeep { limit: 3 })
        );
        // The defaults: a 2 MiB string is refused; deep nesting is an error, not a stack
        // overflow.
        let mut big = b"[\"".to_vec();
        big.resize(2 << 20, b'a');
        big.extend_from_slice(b"\"]");
        let mut m = JsonMasker::new(p.clone());
        let mut out = Vec::new();
        let e = big
            .chunks(64 << 10)
            .try_for_each(|c| m.feed(c, &mut out))
            .unwrap_err();
        assert_eq!(
            e,
            error(
                1,
                JsonErrorKind::TooLong {
                    limit: JsonLimits::DEFAULT_MAX_STRING
                }
            )
        );
        assert!(out.len() <= 1, "nothing of the string was written");
        assert!(m.feed(b"]", &mut out).is_err(), "refuses after an error");
        let deep = "[".repeat(100_000);
        let mut m = JsonMasker::new(p);
        assert_eq!(
            m.feed(deep.as_bytes(), &mut Vec::new()).unwrap_err().kind,
            JsonErrorKind::TooDeep { limit: 512 }
        );
    }

    #[test]
    fn invalid_json_is_an_error_with_its_offset() {
        let p = policy(&[("$..x", Strategy::Redact)]);
        let syntax = JsonErrorKind::Syntax;
        let cases: &[(&[u8], u64, JsonErrorKind)] = &[
            (br#"{"a" 1}"#, 5, syntax("expected `:`")),
            (b"[1,]", 3, syntax("expected a value")),
            (
                b"[1 2]",
                3,
                syntax("expected `,` or the end of the object or array"),
            ),
            (br#"{"a":1,}"#, 7, syntax("expected a key")),
            (b"{1:2}", 1, syntax("expected a key")),
            (b"]", 0, syntax("expected a value")),
            (b"[}", 1, syntax("expected a value")),
            (b"[1}", 2, syntax("mismatched closing bracket")),
            (br#"{"a":1]"#, 6, syntax("mismatched closing bracket")),
            (br#"{"a":1}}"#, 7, syntax("expected a value")),
            (br#"{"a":tru}"#, 5, syntax("invalid literal")),
            (b"nulll", 0, syntax("invalid literal")),
            (b"truefalse", 0, syntax("invalid literal")),
            (b"nul", 0, syntax("invalid literal")),
            (b"01", 1, syntax("invalid number")),
            (b"1.", 2, syntax("invalid number")),
            (b"-", 1, syntax("invalid number")),
            (b"[1e+]", 4, syntax("invalid number")),
            (b"[--1]", 2, syntax("invalid number")),
            (
                b"1x",
                1,
                syntax("expected whitespace after a top-level value"),
            ),
            (
                b"true[]",
                4,
                syntax("expected whitespace after a top-level value"),
            ),
            (b"x", 0, syntax("expected a value")),
            ("\u{feff}{}".as_bytes(), 0, syntax("expected a value")),
            (br#"["\x"]"#, 2, JsonErrorKind::Escape),
            (br#"["ab\u12"]"#, 4, JsonErrorKind::Escape),
            (br#"{"\q":1}"#, 2, JsonErrorKind::Escape),
            (b"[\"a\x01b\"]", 3, JsonErrorKind::ControlCharacter),
            (b"[\"a\nb\"]", 3, JsonErrorKind::ControlCharacter),
            (b"[\"ab\xffc\"]", 4, JsonErrorKind::Utf8),
            (b"[\"\xc3\"]", 2, JsonErrorKind::Utf8),
            (b"{\"\xc3\":1}", 2, JsonErrorKind::Utf8),
            (b"\"abc", 4, JsonErrorKind::Truncated),
            (b"\"abc\\", 5, JsonErrorKind::Truncated),
            (b"[", 1, JsonErrorKind::Truncated),
            (br#"{"a":[1,{"b":2}"#, 15, JsonErrorKind::Truncated),
            (br#"{"a""#, 4, JsonErrorKind::Truncated),
            (br#"{"a":"#, 5, JsonErrorKind::Truncated),
        ];
        for (input, offset, kind) in cases {
            let e = fails(&p, input, JsonLimits::default());
            assert_eq!(
                (e.offset, e.kind),
                (*offset, *kind),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn paths_parse() {
        for ok in [
            "$",
            "$.a",
            "$.a.b",
            "$..a",
            "$.*",
            "$[*]",
            "$..*",
            "$..[*]",
            "$[0]",
            "$..[12].x",
            "$['a.b']",
            "$[\"x\\\"y\"].z",
            "$.é",
            "$..*_id",
            "$.a?c",
        ] {
            assert!(JsonPath::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a",
            "$.",
            "$..",
            "$a",
            "$[",
            "$[x]",
            "$['a]",
            "$[1",
            "$.a]",
            "$[99999999999999999999]",
        ] {
            assert!(JsonPath::parse(bad).is_err(), "{bad}");
        }
        let e = JsonPath::parse("$.a..").unwrap_err();
        assert_eq!(e.position, 5);
        assert!(e.to_string().contains("$.a.."), "{e}");
        assert_eq!("$.x".parse::<JsonPath>().unwrap().as_str(), "$.x");
        assert!(glob(b"*_token", b"refresh_token"));
        assert!(glob("?é*".as_bytes(), "aéz".as_bytes()));
        assert!(glob("*é".as_bytes(), "ééé".as_bytes()));
        assert!(!glob(b"a?c", b"ac"));
        assert!(!glob(b"*_token", b"token"));
    }

    // ---- properties ------------------------------------------------------------------------

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn ws(rng: &mut Rng, out: &mut String) {
        match rng.next() % 8 {
            0 => out.push(' '),
            1 => out.push_str("\n  "),
            2 => out.push('\t'),
            3 => out.push_str("\r\n"),
            _ => {}
        }
    }

    /// A string written with random (valid) escapes.
    fn write_str(s: &str, rng: &mut Rng, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' if rng.next().is_multiple_of(2) => out.push_str("\\n"),
                c if (c as u32) < 0x20 => write!(out, "\\u{:04x}", c as u32).unwrap(),
                '/' if rng.next().is_multiple_of(2) => out.push_str("\\/"),
                c if rng.next().is_multiple_of(5) => {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        if rng.next().is_multiple_of(2) {
                            write!(out, "\\u{u:04x}").unwrap();
                        } else {
                            write!(out, "\\u{u:04X}").unwrap();
                        }
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }

    fn write_value(v: &Value, rng: &mut Rng, out: &mut String) {
        ws(rng, out);
        match v {
            Value::String(s) => write_str(s, rng, out),
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        ws(rng, out);
                        out.push(',');
                    }
                    write_value(item, rng, out);
                }
                ws(rng, out);
                out.push(']');
            }
            Value::Object(members) => {
                out.push('{');
                for (i, (k, item)) in members.iter().enumerate() {
                    if i > 0 {
                        ws(rng, out);
                        out.push(',');
                    }
                    ws(rng, out);
                    write_str(k, rng, out);
                    ws(rng, out);
                    out.push(':');
                    write_value(item, rng, out);
                }
                ws(rng, out);
                out.push('}');
            }
            scalar => out.push_str(&scalar.to_string()),
        }
    }

    const KEYS: &[&str] = &["a", "b", "email", "secret", "note", "x y", "é", "se\"cret"];

    fn leaf_string() -> impl Gen<Value = String> {
        prop_oneof![
            "[a-z ]{0,12}",
            "\\PC{0,8}",
            "[\\x00-\\x1f\"\\\\/]{0,4}",
            (
                "[a-z ]{0,6}",
                "[a-z]{1,6}(\\.[a-z]{1,4})?@(example|mail)\\.(com|org)",
                "[ ,;]{0,1}[a-z]{0,6}"
            )
                .prop_map(|(a, e, b)| format!("{a}{e}{b}")),
            Just("card 4242 4242 4242 4242".to_owned()),
            Just("ip 10.0.0.7 ssn 123-45-6789 +1 415-555-0132".to_owned()),
            Just("\u{1F600} \"q\" \\ jane@example.com\n".to_owned()),
        ]
    }

    fn json_value() -> impl Gen<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            Just(Value::from(4_242_424_242_424_242u64)),
            (-1e9f64..1e9).prop_map(Value::from),
            leaf_string().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 40, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::vec((proptest::sample::select(KEYS), inner), 0..6).prop_map(
                    |members| Value::Object(
                        members
                            .into_iter()
                            .map(|(k, v)| (k.to_owned(), v))
                            .collect()
                    )
                ),
            ]
        })
    }

    /// What masking must give, computed on the parsed value (the rule: `$..secret` →
    /// redact).
    fn oracle(masker: &Masker, v: &Value, ruled: bool) -> Value {
        let (mut scratch, mut counts) = (Vec::new(), BTreeMap::new());
        match v {
            Value::String(_) if ruled => Value::String("[redacted]".into()),
            Value::Number(_) | Value::Bool(_) if ruled => Value::Null,
            Value::String(s) => match masker.mask(s.as_bytes(), &mut scratch, &mut counts) {
                Masked::Clean => v.clone(),
                Masked::Rewritten(b) => Value::String(String::from_utf8(b).unwrap()),
                Masked::Null => Value::Null,
            },
            Value::Number(n) => {
                let text = n.to_string();
                let card = super::integral_digits(text.as_bytes()).is_some_and(|d| {
                    (12..=19).contains(&d.len())
                        && masker.mask(d.as_bytes(), &mut scratch, &mut counts) != Masked::Clean
                });
                if card { Value::Null } else { v.clone() }
            }
            Value::Array(items) => {
                Value::Array(items.iter().map(|x| oracle(masker, x, ruled)).collect())
            }
            Value::Object(members) => Value::Object(
                members
                    .iter()
                    .map(|(k, x)| (k.clone(), oracle(masker, x, ruled || k == "secret")))
                    .collect(),
            ),
            Value::Null | Value::Bool(_) => v.clone(),
        }
    }

    fn cuts_in(cuts: &[Index], len: usize) -> Vec<usize> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(len + 1)).collect();
        cuts.sort_unstable();
        cuts
    }

    proptest! {
        /// Any documents, written with random whitespace and escapes, as an NDJSON stream
        /// cut at random places: the output is the same for every cutting, is valid JSON,
        /// and is what masking each value of the parsed documents gives.
        #[test]
        fn masks_like_the_oracle_whatever_the_chunking(
            docs in proptest::collection::vec(json_value(), 1..4),
            seed in any::<u64>(),
            cuts in proptest::collection::vec(any::<Index>(), 0..10),
        ) {
            let p = policy(&[("$..secret", Strategy::Redact)]);
            let mut rng = Rng(seed | 1);
            let mut text = String::new();
            for doc in &docs {
                write_value(doc, &mut rng, &mut text);
                text.push('\n');
            }
            let input = text.as_bytes();
            let whole = run_cuts(&p, input, &[], JsonLimits::default()).unwrap();
            let cuts = cuts_in(&cuts, input.len());
            prop_assert_eq!(&run_cuts(&p, input, &cuts, JsonLimits::default()).unwrap(), &whole);
            let parsed: Vec<Value> = serde_json::Deserializer::from_slice(&whole)
                .into_iter::<Value>()
                .collect::<Result<_, _>>()
                .unwrap();
            // The oracle works on the input as serde_json reads it (floats may not read back
            // exactly as generated).
            let read: Vec<Value> = serde_json::Deserializer::from_slice(input)
                .into_iter::<Value>()
                .collect::<Result<_, _>>()
                .unwrap();
            prop_assert_eq!(read.len(), docs.len());
            let expected: Vec<Value> = read.iter().map(|d| oracle(p.masker(), d, false)).collect();
            prop_assert_eq!(parsed, expected);

            // Nothing to mask: the input comes back byte for byte.
            let none = Arc::new(JsonPolicy::new(Masker::new(
                Detectors::new(&[], Vec::new()).unwrap(),
                Strategy::Partial,
            )));
            prop_assert_eq!(run_cuts(&none, input, &cuts, JsonLimits::default()).unwrap(), input);
        }

        /// Bytes near JSON, and any bytes: never a panic, and the same result (output or
        /// error) however they are cut.
        #[test]
        fn any_input_is_handled_the_same_however_cut(
            text in "[\\[\\]{}:,\" a-z0-9@.\\\\eE+-]{0,60}",
            bytes in proptest::collection::vec(any::<u8>(), 0..60),
            cuts in proptest::collection::vec(any::<Index>(), 0..6),
        ) {
            let p = policy(&[("$..a", Strategy::Redact), ("$[*]", Strategy::Null)]);
            let limits = JsonLimits { max_string: 10, max_depth: 4 };
            for input in [text.as_bytes(), &bytes] {
                let whole = run_cuts(&p, input, &[], limits);
                let cuts = cuts_in(&cuts, input.len());
                prop_assert_eq!(run_cuts(&p, input, &cuts, limits), whole.clone());
                if let Ok(out) = whole {
                    for doc in serde_json::Deserializer::from_slice(&out).into_iter::<Value>() {
                        prop_assert!(doc.is_ok(), "{:?} gave {:?}", input, String::from_utf8_lossy(&out));
                    }
                }
            }
        }

        /// The word-at-a-time scan finds the same first special byte as a byte loop.
        #[test]
        fn word_scan_is_exact(
            bytes in proptest::collection::vec(
                proptest::sample::select(&[
                    b'"', b'\\', 0, 1, 0x1f, 0x20, 0x21, 0x23, 0x5b, 0x5d, 0x7f, 0x80, 0x9f,
                    0xa0, 0xa2, 0xdc, 0xff, b'a',
                ][..]),
                8,
            ),
        ) {
            let word: [u8; 8] = bytes.clone().try_into().unwrap();
            let naive = word.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20);
            let stop = stops(u64::from_le_bytes(word));
            prop_assert_eq!(naive, (stop != 0).then(|| (stop.trailing_zeros() / 8) as usize));
            let mut scan = StrScan::default();
            let mut padded = bytes.clone();
            padded.extend_from_slice(b"0123456789\"");
            let found = scan_string(&padded, &mut scan);
            let expected = match naive.map(|k| (k, padded[k])) {
                None => Ok(Some(18)),
                Some((k, b'"')) => Ok(Some(k)),
                Some((k, b'\\')) => {
                    // What follows the escape is skipped; find the rest naively.
                    let rest = padded[k + 2..].iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20);
                    match rest.map(|r| (k + 2 + r, padded[k + 2 + r])) {
                        Some((at, b'"')) => Ok(Some(at)),
                        Some((at, b'\\')) => {
                            // A second escape: leave it to the general tests.
                            let _ = at;
                            found
                        }
                        Some((at, _)) => Err(at),
                        None => Ok(None),
                    }
                }
                Some((k, _)) => Err(k),
            };
            prop_assert_eq!(found, expected);
            if let Ok(Some(end)) = found {
                prop_assert_eq!(scan.high, padded[..end].iter().any(|&c| c >= 0x80));
            }
        }

        /// Names with globs match as column rules do.
        #[test]
        fn globs_match_like_column_rules(pattern in "[ab*?é]{0,6}", text in "[abé]{0,8}") {
            prop_assert_eq!(
                glob(pattern.as_bytes(), text.as_bytes()),
                portcullis_core::wildcard(&pattern, &text)
            );
        }

        /// Any text written as a JSON string reads back as itself.
        #[test]
        fn strings_are_written_as_json(text in "(\\PC|[\\x00-\\x1f\"\\\\]){0,40}") {
            let mut out = Vec::new();
            write_string(text.as_bytes(), &mut out);
            let back: String = serde_json::from_slice(&out).unwrap();
            prop_assert_eq!(back, text);
        }

        /// A valid document with one byte changed: never a panic, the same result however cut.
        #[test]
        fn mutated_documents(
            doc in json_value(),
            seed in any::<u64>(),
            at in any::<Index>(),
            byte in any::<u8>(),
            cuts in proptest::collection::vec(any::<Index>(), 0..6),
        ) {
            let p = policy(&[("$..email", Strategy::Null)]);
            let mut text = String::new();
            write_value(&doc, &mut Rng(seed | 1), &mut text);
            let mut input = text.into_bytes();
            let at = at.index(input.len());
            input[at] = byte;
            let whole = run_cuts(&p, &input, &[], JsonLimits::default());
            let cuts = cuts_in(&cuts, input.len());
            prop_assert_eq!(run_cuts(&p, &input, &cuts, JsonLimits::default()), whole);
        }
    }
}
