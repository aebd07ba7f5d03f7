//! A readable timeline of a trail: `portcullis audit show`.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead as _, BufReader, Write};
use std::path::PathBuf;

use crate::chain::parse_line;
use crate::event::{AuditEvent, DecisionRecord, ParamRecord, Status};

/// What to show.
#[derive(Debug, Clone, Default)]
pub struct ShowOptions {
    /// Only this session (its 16 hex digits, or a unique prefix).
    pub session: Option<String>,
    /// Print the matching records as they are (JSON lines) instead of a timeline.
    pub json: bool,
}

/// Print the trail made of `files` to `out`. Lines that are not valid records are shown
/// as such (run `verify` to learn why). Returns how many records were shown.
pub fn show(files: &[PathBuf], options: &ShowOptions, out: &mut dyn Write) -> std::io::Result<u64> {
    let mut shown = 0;
    for path in files {
        let reader = BufReader::new(File::open(path)?);
        for (n, line) in reader.split(b'\n').enumerate() {
            let line = line?;
            if line.is_empty() {
                continue;
            }
            let parsed = match parse_line(&line) {
                Ok(parsed) => parsed,
                Err(e) => {
                    if options.session.is_none() && !options.json {
                        writeln!(out, "!! {}:{}: {e}", path.display(), n + 1)?;
                    }
                    continue;
                }
            };
            if let Some(wanted) = &options.session {
                match parsed.event.session() {
                    Some(s) if s.session.starts_with(wanted.as_str()) => {}
                    _ => continue,
                }
            }
            shown += 1;
            if options.json {
                out.write_all(&line)?;
                out.write_all(b"\n")?;
            } else {
                writeln!(out, "{}", render(&parsed.ts, &parsed.event))?;
            }
        }
    }
    Ok(shown)
}

fn render(ts: &str, event: &AuditEvent) -> String {
    let mut s = String::new();
    let _ = write!(s, "{ts}  ");
    if let Some(r) = event.session() {
        let _ = write!(s, "[{}] ", r.session);
    }
    match event {
        AuditEvent::TrailStart(t) => {
            let _ = write!(
                s,
                "trail opened ({}) by {} pid {}",
                t.reason, t.writer, t.pid
            );
            if t.previous_sealed == Some(false) {
                s.push_str("; the run before ended without closing the trail");
            }
            if let Some(n) = t.discarded_bytes {
                let _ = write!(s, "; {n} bytes of a record cut off by a crash discarded");
            }
        }
        AuditEvent::SessionStart(e) => {
            let who = &e.who;
            let _ = write!(s, "session start: {}", who.subject);
            if let Some(d) = &who.display {
                let _ = write!(s, " ({d})");
            }
            let _ = write!(
                s,
                " [{}] via {} from {} to {} as {}@{}",
                who.groups.join(", "),
                who.method,
                e.session.peer,
                e.session.target,
                e.upstream_user,
                e.upstream
            );
            if let Some(db) = &e.database {
                let _ = write!(s, " db={db}");
            }
            if let Some(app) = &e.application {
                let _ = write!(s, " app={app}");
            }
            let _ = write!(s, " tls={}", if e.tls { "yes" } else { "no" });
        }
        AuditEvent::Command(c) => {
            let _ = write!(s, "#{} {} ({})", c.command, c.session.identity, c.kind);
            for st in &c.statements {
                let mut text = st.text.split_whitespace().collect::<Vec<_>>().join(" ");
                if let Some(name) = &st.prepared {
                    text = format!("{text}  [prepared {name}]");
                }
                if !st.executes {
                    text.push_str("  [not executed]");
                }
                let _ = write!(s, "\n      > {text}");
            }
            if !c.params.is_empty() {
                let params: Vec<String> = c
                    .params
                    .iter()
                    .map(|p| match p {
                        ParamRecord::Null => "NULL".to_owned(),
                        ParamRecord::Text(t) => format!("'{t}'"),
                        ParamRecord::Binary { binary } => format!("x'{binary}'"),
                        ParamRecord::Cut { prefix, bytes } => {
                            format!("'{prefix}…' ({bytes} bytes)")
                        }
                    })
                    .collect();
                let _ = write!(s, "\n      params: {}", params.join(", "));
            }
        }
        AuditEvent::Outcome(o) => {
            let status = match o.status {
                Status::Ok => "ok",
                Status::Error => "error",
                Status::Refused => "REFUSED",
                Status::Cancelled => "cancelled",
                Status::Failed => "failed",
                Status::Abandoned => "abandoned",
            };
            let _ = write!(s, "#{} → {status}", o.command);
            if let Some(tag) = &o.tag {
                let _ = write!(s, " {tag}");
            }
            let _ = write!(
                s,
                " · {} rows · {} bytes · {:.3} ms",
                o.rows,
                o.bytes,
                o.duration_us as f64 / 1000.0
            );
            if let Some(e) = &o.error {
                let _ = write!(s, " · {} {}", e.code, e.message);
            }
            for d in &o.decisions {
                s.push_str("\n      ");
                render_decision(&mut s, d);
            }
            if let Some(m) = &o.masking {
                let _ = write!(
                    s,
                    "\n      masked {} values in {}",
                    m.values,
                    m.columns.join(", ")
                );
            }
        }
        AuditEvent::Decision(d) => {
            let _ = write!(s, "#{} ", d.command);
            render_decision(&mut s, &d.decision);
        }
        AuditEvent::SessionEvent(e) => {
            let _ = write!(s, "{}", e.event);
            for part in [&e.code, &e.name, &e.message].into_iter().flatten() {
                let _ = write!(s, " {part}");
            }
        }
        AuditEvent::SessionEnd(e) => {
            let _ = write!(s, "session end after {} commands: {}", e.commands, e.reason);
        }
        AuditEvent::Connection(c) => {
            let _ = write!(s, "connection {} from {} to {}", c.event, c.peer, c.target);
            if let Some(user) = &c.claimed_user {
                let _ = write!(s, " user={user}");
            }
            let _ = write!(s, ": {}", c.reason);
        }
        AuditEvent::Gap(g) => {
            let _ = write!(
                s,
                "GAP: {} records lost since {} ({})",
                g.lost, g.since, g.reason
            );
        }
        AuditEvent::Checkpoint(c) => {
            let _ = write!(
                s,
                "checkpoint ({}){}",
                c.reason,
                if c.sig.is_some() {
                    ", signed"
                } else {
                    ", unsigned"
                }
            );
        }
    }
    s
}

/// `decision: LAYER VERDICT [rule "R"] [by P] [(detail)]`.
fn render_decision(s: &mut String, d: &DecisionRecord) {
    let _ = write!(s, "decision: {} {}", d.layer, d.verdict);
    if let Some(rule) = &d.rule {
        let _ = write!(s, " rule \"{rule}\"");
    }
    if let Some(by) = &d.by {
        let _ = write!(s, " by {by}");
    }
    if let Some(detail) = &d.detail {
        let _ = write!(s, " ({detail})");
    }
}
