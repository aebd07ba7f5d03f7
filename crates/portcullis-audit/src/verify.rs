//! Offline verification of a chained trail: `portcullis audit verify`.
//!
//! Checks, in one pass and in this order for each record: its own hash, its link to the
//! record before (`prev`, `seq`), checkpoint signatures, the sequence numbers of each
//! session, and that every command has an outcome. Stops at the first record that was
//! altered, removed, reordered, inserted or cut off and names it. A trail that does not end
//! with a `shutdown` checkpoint has an *unsealed tail*: after a crash, or because records
//! were cut off the end — without a second copy of the checkpoints the two cannot be told
//! apart, so it fails unless `--live` says the gateway is still writing it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};

use crate::chain::{
    GENESIS, LineError, ParsedLine, checkpoint_message, parse_line, verify_signature,
};
use crate::event::{AuditEvent, SCHEMA_VERSION};

/// What to check besides the chain.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// The public key (hex) checkpoints must be signed with. Without it, signatures are
    /// checked against the key the trail names, which proves integrity only against someone
    /// who cannot also re-sign.
    pub key: Option<String>,
    /// A file of published checkpoint copies (the JSONL sink's `checkpoint_copy`).
    pub checkpoints: Option<PathBuf>,
    /// The trail is still being written: an unsealed tail is expected, not a failure.
    pub live: bool,
}

/// Where a record is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file.
    pub file: PathBuf,
    /// The 1-based line.
    pub line: u64,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// The first thing wrong with a trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The record (or the place) that is wrong.
    pub at: Location,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// The result of a verification.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Files read, in order.
    pub files: Vec<PathBuf>,
    /// Records checked.
    pub records: u64,
    /// First and last sequence numbers.
    pub seq: Option<(u64, u64)>,
    /// First and last timestamps.
    pub span: Option<(String, String)>,
    /// Sessions started.
    pub sessions: u64,
    /// Commands recorded.
    pub commands: u64,
    /// Connection events (refused logins...).
    pub connections: u64,
    /// Checkpoints, and how many were signed.
    pub checkpoints: u64,
    /// Signed checkpoints.
    pub signed: u64,
    /// The key that signed them.
    pub key: Option<String>,
    /// Whether the trail ends with a `shutdown` checkpoint.
    pub sealed: bool,
    /// Things worth knowing that do not make the trail invalid.
    pub warnings: Vec<String>,
    /// The first problem; `None` when the trail is intact.
    pub problem: Option<Problem>,
}

impl Report {
    /// Whether the trail is intact.
    pub fn intact(&self) -> bool {
        self.problem.is_none()
    }
}

#[derive(Debug, Default)]
struct SessionState {
    /// Highest `sseq` seen and how many records.
    max_sseq: u64,
    count: u64,
    open_commands: HashMap<u64, Location>,
    ended: bool,
    first: Option<Location>,
}

struct Line {
    at: Location,
    bytes: Vec<u8>,
    terminated: bool,
}

/// Verify the trail made of `files`, in order (use [`crate::trail_files`] to list a live
/// file's segments).
pub fn verify_files(files: &[PathBuf], options: &VerifyOptions) -> std::io::Result<Report> {
    let mut lines = Vec::new();
    for file in files {
        lines.push(read_lines(file)?);
    }
    let iter = lines.into_iter().flatten();
    let mut report = verify_lines(iter, options)?;
    report.files = files.to_vec();
    Ok(report)
}

fn read_lines(file: &Path) -> std::io::Result<impl Iterator<Item = Line>> {
    let mut reader = BufReader::new(File::open(file)?);
    let file = file.to_path_buf();
    let mut n = 0;
    Ok(std::iter::from_fn(move || {
        let mut bytes = Vec::new();
        match reader.read_until(b'\n', &mut bytes) {
            Ok(0) | Err(_) => None,
            Ok(_) => {
                n += 1;
                let terminated = bytes.last() == Some(&b'\n');
                if terminated {
                    bytes.pop();
                }
                Some(Line {
                    at: Location {
                        file: file.clone(),
                        line: n,
                    },
                    bytes,
                    terminated,
                })
            }
        }
    }))
}

/// Verify records given as `(where, line bytes without newline)`, e.g. the `line` column of
/// the PostgreSQL sink's table in `seq` order.
pub fn verify_records(
    records: impl IntoIterator<Item = (Location, Vec<u8>)>,
    options: &VerifyOptions,
) -> std::io::Result<Report> {
    verify_lines(
        records.into_iter().map(|(at, bytes)| Line {
            at,
            bytes,
            terminated: true,
        }),
        options,
    )
}

fn verify_lines(
    lines: impl Iterator<Item = Line>,
    options: &VerifyOptions,
) -> std::io::Result<Report> {
    let mut v = Verifier {
        options,
        report: Report::default(),
        prev: None,
        sessions: HashMap::new(),
        checkpoints_at: HashMap::new(),
        last: None,
        last_checkpoint: None,
        since_checkpoint: 0,
        lost: 0,
        warned_unsigned: false,
    };
    let mut lines = lines.peekable();
    let mut bad: Option<(Location, usize, LineError)> = None;
    while let Some(line) = lines.next() {
        let parsed = match parse_line(&line.bytes) {
            Ok(parsed) => parsed,
            Err(e) => {
                if let Some((at, _, e)) = bad.take() {
                    return Ok(v.fail(at, format!("not a valid record: {e} (altered)")));
                }
                if !line.terminated && lines.peek().is_none() {
                    if options.live {
                        v.report.warnings.push(format!(
                            "{}: the last record is still being written",
                            line.at
                        ));
                        break;
                    }
                    return Ok(v.fail(
                        line.at,
                        "the last record is cut off (the file was truncated, or the gateway crashed while writing)".into(),
                    ));
                }
                bad = Some((line.at, line.bytes.len(), e));
                continue;
            }
        };
        if let Some((at, len, e)) = bad.take() {
            // Only a record cut off by a crash may stand outside the chain, and only when the
            // writer that came next said so.
            let declared = matches!(&parsed.event, AuditEvent::TrailStart(t) if t.discarded_bytes == Some(len as u64 + 1) || t.discarded_bytes == Some(len as u64));
            if !declared {
                let message = match e {
                    LineError::HashMismatch => {
                        "its content does not match its hash (altered)".to_owned()
                    }
                    e => format!("not a valid record: {e} (altered)"),
                };
                return Ok(v.fail(at, message));
            }
            v.report.warnings.push(format!(
                "{at}: a record cut off by a crash ({len} bytes), declared by the next writer"
            ));
        }
        let next_seq = lines
            .peek()
            .and_then(|l| parse_line(&l.bytes).ok())
            .map(|p| p.seq);
        if let Err(message) = v.record(&line.at, &parsed, next_seq) {
            return Ok(v.fail(line.at, message));
        }
    }
    if let Some((at, _, e)) = bad {
        return Ok(v.fail(at, format!("not a valid record: {e} (altered)")));
    }
    v.finish()?;
    Ok(v.report)
}

struct Verifier<'a> {
    options: &'a VerifyOptions,
    report: Report,
    /// `(seq, hash)` of the last record.
    prev: Option<(u64, [u8; 32])>,
    sessions: HashMap<String, SessionState>,
    /// seq → hash of every checkpoint, for the published copies.
    checkpoints_at: HashMap<u64, [u8; 32]>,
    last: Option<(Location, String)>,
    last_checkpoint: Option<(Location, String)>,
    since_checkpoint: u64,
    lost: u64,
    warned_unsigned: bool,
}

impl Verifier<'_> {
    fn fail(mut self, at: Location, message: String) -> Report {
        self.report.problem = Some(Problem { at, message });
        self.report
    }

    fn record(
        &mut self,
        at: &Location,
        r: &ParsedLine,
        next_seq: Option<u64>,
    ) -> Result<(), String> {
        if r.v != SCHEMA_VERSION {
            return Err(format!(
                "record of schema version {} (this build reads version {SCHEMA_VERSION})",
                r.v
            ));
        }
        match self.prev {
            None if r.seq == 0 && r.prev != GENESIS => {
                return Err("the first record of a trail must follow nothing (prev is not zero)".into());
            }
            None if r.seq > 0 => self.report.warnings.push(format!(
                "{at}: the trail starts at seq {} (earlier records not given; pass the live file to include its segments)",
                r.seq
            )),
            None => {}
            Some((seq, hash)) => {
                let expect = seq + 1;
                if r.seq == expect && r.prev != hash {
                    return Err(format!(
                        "seq {} does not follow the record before it: that record was altered or replaced, or the trail was spliced from another one",
                        r.seq
                    ));
                }
                if r.seq < expect {
                    return Err(if r.seq == seq {
                        format!("seq {} appears twice: a record was inserted (or duplicated) here", r.seq)
                    } else {
                        format!("seq {} comes after seq {seq}: records were reordered (or spliced from another trail)", r.seq)
                    });
                }
                if r.seq > expect {
                    return Err(if next_seq == Some(expect) {
                        format!("seq {} comes before seq {expect}: records were reordered", r.seq)
                    } else {
                        format!(
                            "{} record(s) missing before this one (seq {expect} to {}): removed, or spliced from another trail",
                            r.seq - expect,
                            r.seq - 1
                        )
                    });
                }
            }
        }
        self.prev = Some((r.seq, r.hash));
        self.report.records += 1;
        self.report.seq = Some((self.report.seq.map_or(r.seq, |(first, _)| first), r.seq));
        self.report.span = Some((
            self.report
                .span
                .as_ref()
                .map_or_else(|| r.ts.clone(), |(first, _)| first.clone()),
            r.ts.clone(),
        ));
        self.last = Some((at.clone(), r.event.kind().to_owned()));
        self.since_checkpoint += 1;
        self.report.sealed = false;

        if let Some(s) = r.event.session() {
            let state = self.sessions.entry(s.session.to_string()).or_default();
            state.first.get_or_insert_with(|| at.clone());
            state.count += 1;
            state.max_sseq = state.max_sseq.max(s.sseq);
        }
        match &r.event {
            AuditEvent::SessionStart(_) => self.report.sessions += 1,
            AuditEvent::Command(c) => {
                self.report.commands += 1;
                if let Some(state) = self.sessions.get_mut(&*c.session.session) {
                    state.open_commands.insert(c.command, at.clone());
                }
            }
            AuditEvent::Outcome(o) => {
                let known = self
                    .sessions
                    .get_mut(&*o.session.session)
                    .and_then(|s| s.open_commands.remove(&o.command))
                    .is_some();
                if !known && self.lost == 0 {
                    return Err(format!(
                        "outcome of command {} of session {} without its command record (removed?)",
                        o.command, o.session.session
                    ));
                }
            }
            AuditEvent::SessionEnd(e) => {
                if let Some(state) = self.sessions.get_mut(&*e.session.session) {
                    state.ended = true;
                }
            }
            AuditEvent::Connection(_) => self.report.connections += 1,
            AuditEvent::Gap(g) => {
                self.lost += g.lost;
                self.report.warnings.push(format!(
                    "{at}: {} record(s) lost since {} ({})",
                    g.lost, g.since, g.reason
                ));
            }
            AuditEvent::TrailStart(t) if t.previous_sealed == Some(false) => {
                self.report.warnings.push(format!(
                    "{at}: the run before this one ended without closing the trail (crash or kill); its open sessions end here"
                ));
                for state in self.sessions.values_mut() {
                    if !state.ended {
                        state.ended = true;
                        state.open_commands.clear();
                    }
                }
            }
            AuditEvent::Checkpoint(c) => {
                self.report.checkpoints += 1;
                self.checkpoints_at.insert(r.seq, r.hash);
                match (&c.key, &c.sig) {
                    (Some(key), Some(sig)) => {
                        if let Some(pinned) = &self.options.key
                            && !pinned.eq_ignore_ascii_case(key)
                        {
                            return Err(format!(
                                "checkpoint signed by key {key}, not by the expected key {pinned}"
                            ));
                        }
                        if let Some(seen) = &self.report.key
                            && seen != key
                        {
                            return Err(format!(
                                "checkpoint signed by key {key} while earlier ones were signed by {seen}"
                            ));
                        }
                        let message = checkpoint_message(r.seq, &hex::encode(r.prev));
                        if !verify_signature(key, sig, &message) {
                            return Err(
                                "checkpoint signature does not verify: the records before it were rewritten".into(),
                            );
                        }
                        self.report.key = Some(key.clone());
                        self.report.signed += 1;
                    }
                    _ => {
                        if self.options.key.is_some() {
                            return Err("unsigned checkpoint where signed ones are expected".into());
                        }
                        if !self.warned_unsigned {
                            self.warned_unsigned = true;
                            self.report.warnings.push(format!(
                                "{at}: checkpoints are not signed (configure [audit] signing_key): a rewrite of the whole trail would not be detected"
                            ));
                        }
                    }
                }
                self.last_checkpoint = Some((at.clone(), r.ts.clone()));
                self.since_checkpoint = 0;
                self.report.sealed = c.reason == "shutdown";
            }
            _ => {}
        }
        Ok(())
    }

    fn finish(&mut self) -> std::io::Result<()> {
        let Some((last_at, _)) = self.last.clone() else {
            self.report.problem = None;
            self.report
                .warnings
                .push("the trail holds no records".into());
            return Ok(());
        };
        // Published checkpoint copies: each must be in the trail, with the same hash.
        if let Some(copies) = &self.options.checkpoints {
            let last_seq = self.report.seq.map_or(0, |(_, last)| last);
            let first_seq = self.report.seq.map_or(0, |(first, _)| first);
            for line in read_lines(copies)? {
                let Ok(copy) = parse_line(&line.bytes) else {
                    self.report.problem = Some(Problem {
                        at: line.at,
                        message: "not a valid checkpoint copy (altered)".into(),
                    });
                    return Ok(());
                };
                if copy.seq < first_seq {
                    continue;
                }
                if copy.seq > last_seq {
                    self.report.problem = Some(Problem {
                        at: last_at,
                        message: format!(
                            "truncated: a checkpoint published at {} covers records up to seq {}, but the trail ends at seq {last_seq}",
                            copy.ts, copy.seq
                        ),
                    });
                    return Ok(());
                }
                if self.checkpoints_at.get(&copy.seq) != Some(&copy.hash) {
                    self.report.problem = Some(Problem {
                        at: line.at,
                        message: format!(
                            "the checkpoint published at {} for seq {} is not in the trail: the trail was rewritten",
                            copy.ts, copy.seq
                        ),
                    });
                    return Ok(());
                }
            }
        }
        let mut sessions: Vec<_> = self.sessions.iter().collect();
        sessions.sort_by_key(|(_, s)| s.first.as_ref().map(|l| (l.file.clone(), l.line)));
        for (id, state) in sessions {
            if state.count != state.max_sseq {
                let message = format!(
                    "session {id}: {} of its records are missing (sequence numbers reach {}, {} present)",
                    state.max_sseq.saturating_sub(state.count),
                    state.max_sseq,
                    state.count
                );
                if self.lost > 0 {
                    self.report
                        .warnings
                        .push(format!("{message}; the trail records lost records"));
                } else if let Some(first) = &state.first {
                    self.report.problem = Some(Problem {
                        at: first.clone(),
                        message,
                    });
                    return Ok(());
                }
            }
            if state.ended
                && let Some((n, at)) = state.open_commands.iter().min_by_key(|(n, _)| **n)
            {
                let message = format!("session {id}: command {n} has no outcome");
                if self.lost > 0 {
                    self.report
                        .warnings
                        .push(format!("{at}: {message}; the trail records lost records"));
                } else {
                    self.report.problem = Some(Problem {
                        at: at.clone(),
                        message,
                    });
                    return Ok(());
                }
            }
        }
        if !self.report.sealed {
            let since = match &self.last_checkpoint {
                Some((at, ts)) => format!("the last checkpoint ({at}, {ts})"),
                None => "the start (no checkpoint at all)".to_owned(),
            };
            if self.options.live {
                // Asked for: a running gateway's trail has an unsealed tail.
                self.report.warnings.push(format!(
                    "unsealed tail since {since}: {} record(s) after it (the gateway is running; they are sealed at its next checkpoint)",
                    self.since_checkpoint
                ));
            } else {
                let message = format!(
                    "unsealed tail since {since}: {} record(s) after it and no closing checkpoint — the gateway is still running (pass --live), it crashed, or records after {last_at} were cut off",
                    self.since_checkpoint
                );
                self.report.problem = Some(Problem {
                    at: last_at,
                    message,
                });
            }
        }
        Ok(())
    }
}
