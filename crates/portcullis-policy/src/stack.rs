//! Parsing untrusted SQL without running out of stack.
//!
//! PostgreSQL's parser (libpg_query, in C) and sqlparser recurse once per level of a
//! statement's tree, and a left-deep chain (`1+1+1…`) has a level for every two bytes. On a
//! thread's ordinary 2 MiB stack a 100 KB statement would overflow it, which aborts the whole
//! process — every session on every listener. So the statement's size decides where it is
//! parsed, before any recursive work starts:
//!
//! - up to [`INLINE_PARSE`] bytes, on the caller's thread: at most ~1,000 levels, measured to
//!   need under 0.6 MiB of stack in the worst form;
//! - up to [`MAX_PARSED`] bytes, on the parser thread, whose 1 GiB stack (reserved, not
//!   used until touched) holds the deepest tree a statement of that size can make;
//! - longer statements are not parsed: they are refused as too complex to judge.
//!
//! The parser thread runs one parse at a time; its callers wait for it (statements over
//! 2 KiB are a small share of a workload, and their verdicts are cached like any other).

use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

use crate::classify::Unparsed;

/// Statements at most this long are parsed on the caller's thread.
pub const INLINE_PARSE: usize = 2 * 1024;

/// Statements longer than this are refused without parsing.
pub const MAX_PARSED: usize = 2 * 1024 * 1024;

/// The parser thread's stack: ~600 bytes of stack per level (libpg_query, the deepest form
/// measured) at two bytes per level is 600 MiB for a statement of [`MAX_PARSED`] bytes.
const PARSER_STACK: usize = 1 << 30;

type Job = Box<dyn FnOnce() + Send>;

fn parser_thread() -> Option<&'static Mutex<mpsc::Sender<Job>>> {
    static THREAD: OnceLock<Option<Mutex<mpsc::Sender<Job>>>> = OnceLock::new();
    THREAD
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            std::thread::Builder::new()
                .name("portcullis-parser".into())
                .stack_size(PARSER_STACK)
                .spawn(move || {
                    for job in rx {
                        job();
                    }
                })
                .ok()
                .map(|_| Mutex::new(tx))
        })
        .as_ref()
}

/// Run `parse` (which parses `sql` and everything recursive over its tree) where the stack
/// can hold it, or refuse `sql` as too complex.
pub(crate) fn parse_safely<T: Send + 'static>(
    sql: &str,
    parse: impl FnOnce(&str) -> Result<T, Unparsed> + Send + 'static,
) -> Result<T, Unparsed> {
    if sql.len() <= INLINE_PARSE {
        return parse(sql);
    }
    if sql.len() > MAX_PARSED {
        return Err(Unparsed::too_complex(format!(
            "the statement is {} bytes long; the gateway judges statements of at most {} MiB (split it, or load data with COPY)",
            sql.len(),
            MAX_PARSED >> 20
        )));
    }
    let unavailable =
        || Unparsed::too_complex("the parser thread for long statements is not available");
    let Some(thread) = parser_thread() else {
        return Err(unavailable());
    };
    let (tx, rx) = mpsc::sync_channel(1);
    let sql = sql.to_owned();
    let job: Job = Box::new(move || {
        // A panic inside the parser must not take the parser thread down with it.
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| parse(&sql)));
        let _ = tx.send(
            out.unwrap_or_else(|_| Err(Unparsed::new("the parser failed on this statement"))),
        );
    });
    let sent = thread
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send(job)
        .is_ok();
    if !sent {
        return Err(unavailable());
    }
    rx.recv().unwrap_or_else(|_| Err(unavailable()))
}
