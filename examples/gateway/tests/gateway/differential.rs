//! The differential fuzzer: random sequences of frontend messages, built from a grammar of
//! dangerous and benign pieces and split into random writes, are sent through the gateway to
//! a PostgreSQL that logs every statement it runs (`log_statement = 'all'`). After each
//! sequence, what the server logged is compared with what the gateway judged:
//!
//! - every statement (and fastpath function call) the server ran is in the trail as a
//!   judged command;
//! - no statement a rule always denies appears in the server's log;
//! - nothing was damaged (the `victims` table is whole).
//!
//! A short run is part of the test suite; `PORTCULLIS_DIFF_FUZZ_CASES=N` runs N sequences and
//! `PORTCULLIS_DIFF_FUZZ_SEED=S` replays one seed (the seed is printed on every run).

use std::collections::{HashMap, HashSet};
use std::io::{Read as _, Seek as _};
use std::path::Path;
use std::time::{Duration, Instant};

use portcullis_testkit::PgCluster;
use portcullis_testkit::wire::{PgWire, msg};

use super::policy::{ALICE, cluster_with_victims, start};

/// Sequences in the suite's short run.
const SHORT_RUN: usize = 120;
/// The application name the fuzz sessions use, and the server log's line prefix shows.
const APP: &str = "fuzz";

/// Statements a rule above always refuses: none may ever appear in the server's log.
const DENIED: &[&str] = &[
    "DROP TABLE victims",
    "DROP TABLE public.victims",
    "DROP TABLE app.public.\"victims\"",
    "TRUNCATE victims",
    "TRUNCATE ONLY public.victims",
    "DELETE FROM \"victims\"",
    "SELECT pg_catalog.pg_read_file('PG_VERSION')",
    "SELECT * FROM pg_read_file('PG_VERSION')",
    "COPY victims TO PROGRAM 'cat > /dev/null'",
    "DELETE FROM victims",
    "DELETE FROM victims WHERE true",
    "DELETE FROM victims WHERE 1 = 1",
    "UPDATE victims SET name = 'pwned'",
    "INSERT INTO victims VALUES (1, 'a') ON CONFLICT (id) DO UPDATE SET name = 'pwned'",
    "SELECT pg_read_file('PG_VERSION')",
    "SELECT pg_ls_dir('.')",
    "DO $$BEGIN EXECUTE 'DROP TABLE victims'; END$$",
    "ALTER TABLE victims DROP COLUMN name",
    "CREATE FUNCTION fz() RETURNS int LANGUAGE sql AS 'DELETE FROM victims RETURNING 1'",
    "CREATE OPERATOR ~~~ (RIGHTARG = text, FUNCTION = pg_read_file)",
    "UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings'",
];

/// Statements whose effect depends on what ran before them (a prepared name, a setting):
/// the damage check judges them.
const CONTEXTUAL: &[&str] = &[
    "PREPARE d AS DELETE FROM victims",
    "EXECUTE d",
    "SET standard_conforming_strings = off",
    "SET standard_conforming_strings = on",
    "SELECT 'x\\''; DROP TABLE victims; --'",
    "SELECT fz()",
    "SELECT ~~~ 'PG_VERSION'",
    // A view that turns standard_conforming_strings off: no statement text shows it.
    "SELECT * FROM sneaky",
    "SELECT 'a\\'; DROP TABLE victims; --'",
    "SET search_path = pg_catalog, public",
    "SET search_path = public",
    "SET SESSION AUTHORIZATION DEFAULT",
    "RESET ALL",
    "DISCARD ALL",
];

/// Statements every identity may run (none touches `victims` destructively).
const BENIGN: &[&str] = &[
    "SELECT 1",
    "SELECT name FROM victims WHERE id = 1",
    "SELECT count(*) FROM victims",
    "INSERT INTO log VALUES ('fuzz')",
    "UPDATE staging SET name = 'x' WHERE id = 1",
    "DELETE FROM staging WHERE id = 7",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SHOW search_path",
    "PREPARE q AS SELECT 1",
    "EXECUTE q",
    "DEALLOCATE q",
    "SELECT set_config('application_name', 'fuzz', false)",
];

/// Fastpath functions by OID: pg_backend_pid, pg_read_file(text), random.
const FUNCTIONS: &[u32] = &[2026, 2624, 1598];

/// splitmix64: a small, seedable generator (the fuzzer must replay a seed exactly).
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub(super) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    pub(super) fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

fn statement(rng: &mut Rng) -> &'static str {
    let pool = match rng.below(10) {
        0..=5 => BENIGN,
        6..=7 => CONTEXTUAL,
        _ => DENIED,
    };
    pool[rng.below(pool.len())]
}

/// One frontend message of a sequence, with a readable form for the report.
struct Step {
    bytes: Vec<u8>,
    shown: String,
}

fn sequence(rng: &mut Rng) -> Vec<Step> {
    let names = ["", "s1", "s2"];
    let portals = ["", "p1"];
    let mut steps = Vec::new();
    for _ in 0..1 + rng.below(8) {
        let step = match rng.below(12) {
            0..=2 => {
                let n = 1 + rng.below(3);
                let sql = (0..n)
                    .map(|_| statement(rng))
                    .collect::<Vec<_>>()
                    .join("; ");
                Step {
                    bytes: msg::query(&sql),
                    shown: format!("Query({sql:?})"),
                }
            }
            3..=4 => {
                let (name, sql) = (*rng.pick(&names), statement(rng));
                Step {
                    bytes: msg::parse(name, sql),
                    shown: format!("Parse({name:?}, {sql:?})"),
                }
            }
            5 => {
                let (portal, name) = (*rng.pick(&portals), *rng.pick(&names));
                Step {
                    bytes: msg::bind(portal, name, &[]),
                    shown: format!("Bind({portal:?}, {name:?})"),
                }
            }
            6 => {
                let portal = *rng.pick(&portals);
                Step {
                    bytes: msg::execute(portal),
                    shown: format!("Execute({portal:?})"),
                }
            }
            7 => {
                let sql = statement(rng);
                Step {
                    bytes: msg::pbe(sql),
                    shown: format!("Parse/Bind/Execute({sql:?})"),
                }
            }
            8 => Step {
                bytes: msg::sync(),
                shown: "Sync".into(),
            },
            9 => Step {
                bytes: msg::flush(),
                shown: "Flush".into(),
            },
            10 => {
                let (what, name) = if rng.chance(50) {
                    (b'S', *rng.pick(&names))
                } else {
                    (b'P', *rng.pick(&portals))
                };
                Step {
                    bytes: msg::close(what, name),
                    shown: format!("Close({}, {name:?})", what as char),
                }
            }
            _ => {
                let oid = *rng.pick(FUNCTIONS);
                let args: &[&str] = if oid == 2624 { &["PG_VERSION"] } else { &[] };
                Step {
                    bytes: msg::function_call(oid, args),
                    shown: format!("FunctionCall({oid})"),
                }
            }
        };
        steps.push(step);
    }
    if rng.chance(60) {
        steps.push(Step {
            bytes: msg::sync(),
            shown: "Sync".into(),
        });
    }
    steps.push(Step {
        bytes: msg::terminate(),
        shown: "Terminate".into(),
    });
    steps
}

/// `text` without whitespace and semicolons: how the server's log and the trail are compared
/// (the trail records a simple query's statements one by one).
fn squeeze(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_whitespace() && *c != ';')
        .collect()
}

/// What the server logged as run by the fuzz sessions from `offset` on: statement texts, and
/// fastpath calls as `fastpath:OID`.
fn executed(log: &Path, offset: u64) -> Vec<String> {
    let mut file = std::fs::File::open(log).unwrap();
    file.seek(std::io::SeekFrom::Start(offset)).unwrap();
    let mut text = String::new();
    file.read_to_string(&mut text).unwrap();
    let prefix = format!("{APP}|LOG:  ");
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        if let Some(sql) = rest.strip_prefix("statement: ") {
            out.push(sql.to_owned());
        } else if let Some(rest) = rest.strip_prefix("execute ") {
            let rest = rest.strip_prefix("fetch from ").unwrap_or(rest);
            if let Some((_, sql)) = rest.split_once(": ") {
                out.push(sql.to_owned());
            }
        } else if let Some(rest) = rest.strip_prefix("fastpath function call: ") {
            let oid = rest
                .rsplit_once("(OID ")
                .map(|(_, o)| o.trim_end_matches(')'))
                .unwrap_or(rest);
            out.push(format!("fastpath:{oid}"));
        }
    }
    out
}

/// Every judged command in the trail, squeezed (function calls as `fastpath`).
fn judged(trail: &Path) -> HashSet<String> {
    let mut out = HashSet::new();
    for line in super::lines_of(trail) {
        let Ok(parsed) = portcullis_audit::chain::parse_line(line.as_bytes()) else {
            continue;
        };
        if let portcullis_audit::AuditEvent::Command(c) = parsed.event {
            if c.kind == "function_call" {
                out.insert("fastpath".to_owned());
                continue;
            }
            let all: String = c.statements.iter().map(|s| squeeze(&s.text)).collect();
            out.insert(all);
            for s in &c.statements {
                out.insert(squeeze(&s.text));
            }
        }
    }
    out
}

/// A trusted connection straight to the server, for the damage check.
struct Direct(PgWire);

impl Direct {
    fn value(&mut self, sql: &str) -> Option<String> {
        let messages = self.0.simple(sql).unwrap();
        let row = messages.iter().find(|m| m.tag == b'D')?;
        let body = &row.body;
        let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]);
        (len >= 0).then(|| String::from_utf8_lossy(&body[6..6 + len as usize]).into_owned())
    }

    /// What is wrong with `victims`, if anything; and repairs it.
    fn damage(&mut self) -> Option<String> {
        let state = self.value(
            "select coalesce((select string_agg(id || '=' || name, ',' order by id) \
             from victims), 'gone') where to_regclass('public.victims') is not null \
             union all select 'dropped' where to_regclass('public.victims') is null",
        );
        let state = state.unwrap_or_default();
        if state == "1=a,2=b,3=c" {
            return None;
        }
        self.0
            .simple(
                "drop table if exists victims; \
                 create table victims (id int primary key, name text); \
                 insert into victims values (1, 'a'), (2, 'b'), (3, 'c')",
            )
            .unwrap();
        Some(format!("victims is now {state:?}"))
    }

    fn fuzz_sessions(&mut self) -> String {
        self.value(&format!(
            "select count(*) from pg_stat_activity where application_name = '{APP}'"
        ))
        .unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_server_ran_is_what_the_gateway_judged_and_recorded() {
    let cases = std::env::var("PORTCULLIS_DIFF_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SHORT_RUN);
    let seed = std::env::var("PORTCULLIS_DIFF_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("differential fuzzer: {cases} sequences, PORTCULLIS_DIFF_FUZZ_SEED={seed}");

    let cluster = cluster_with_victims().await;
    let mut direct = Direct(
        PgWire::connect_unix(cluster.socket_dir(), cluster.port(), cluster.user(), "app").unwrap(),
    );
    // One statement per query: ALTER SYSTEM cannot run in a multi-statement query.
    for sql in [
        "create view sneaky as select set_config('standard_conforming_strings', 'off', false) as s",
        "alter system set log_statement = 'all'",
        "alter system set log_line_prefix = '%a|'",
        "select pg_reload_conf()",
    ] {
        let out = direct.0.simple(sql).unwrap();
        assert!(out.iter().all(|m| m.tag != b'E'), "{sql}: {out:?}");
    }
    wait_for_logging(&cluster);

    let dir = tempfile::tempdir().unwrap();
    let trail = dir.path().join("trail.jsonl");
    let extra = super::hostile::rules_with_trail(&trail);
    let (_gateway, gw, _admin, _dir) = start(&cluster, &extra).await;
    let log = cluster.log_path();
    let mut rng = Rng(seed);
    let (mut findings, mut ran, mut refused, mut in_place) = (Vec::new(), 0usize, 0usize, 0usize);
    let started = Instant::now();

    for case in 0..cases {
        let steps = sequence(&mut rng);
        let offset = std::fs::metadata(&log).unwrap().len();
        let mut wire = PgWire::connect_with(
            gw,
            &[
                ("user", "alice"),
                ("database", "app"),
                ("application_name", APP),
            ],
            ALICE,
        )
        .unwrap();
        // The messages in random writes: no verdict may depend on the split.
        let bytes: Vec<u8> = steps.iter().flat_map(|s| s.bytes.clone()).collect();
        let mut at = 0;
        while at < bytes.len() {
            let n = if rng.chance(50) {
                bytes.len() - at
            } else {
                1 + rng.below(bytes.len() - at)
            };
            if wire.send(&bytes[at..at + n]).is_err() {
                break;
            }
            at += n;
        }
        // As a client does after Terminate (a refusal may have closed the session already).
        let _ = wire.close_write();
        let replies = wire.until_closed(Duration::from_secs(10));
        refused += replies
            .iter()
            .filter(|m| m.tag == b'E' && m.sqlstate().as_deref() == Some("42501"))
            .count();

        let shown = || {
            steps
                .iter()
                .map(|s| s.shown.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        // The session is over on the server too before its log is read.
        let deadline = Instant::now() + Duration::from_secs(10);
        while direct.fuzz_sessions() != "0" {
            if Instant::now() > deadline {
                let tags: String = replies.iter().map(|m| m.tag as char).collect();
                findings.push(format!(
                    "case {case}: the session did not end after Terminate (replies {tags}); \
                     sequence: {}",
                    shown()
                ));
                direct
                    .0
                    .simple(&format!(
                        "select pg_terminate_backend(pid) from pg_stat_activity \
                     where application_name = '{APP}'"
                    ))
                    .unwrap();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let trail_now = judged(&trail);
        let denied: HashMap<String, &str> = DENIED.iter().map(|d| (squeeze(d), *d)).collect();
        for text in executed(&log, offset) {
            // A refusal in place: the gateway's own statement, sent instead of the unit.
            if text.starts_with("DO $portcullis$BEGIN RAISE EXCEPTION USING ERRCODE = ")
                && text.ends_with("END$portcullis$")
            {
                in_place += 1;
                continue;
            }
            ran += 1;
            let key = if text.starts_with("fastpath:") {
                "fastpath".to_owned()
            } else {
                squeeze(&text)
            };
            if !trail_now.contains(&key) {
                findings.push(format!(
                    "case {case}: the server ran {text:?}, not in the trail; sequence: {}",
                    shown()
                ));
            }
            // A FunctionCall is judged as the function its OID names: pg_read_file is
            // `admin` (denied here), pg_backend_pid and random are reads.
            if text == "fastpath:2624" {
                findings.push(format!(
                    "case {case}: pg_read_file ran by fastpath for an identity denied admin; sequence: {}",
                    shown()
                ));
            }
            let pieces = split_known(&text);
            if let Some(d) = pieces.iter().find_map(|p| denied.get(p)) {
                findings.push(format!(
                    "case {case}: the server ran a denied statement {d:?} (in {text:?}); sequence: {}",
                    shown()
                ));
            }
        }
        if let Some(d) = direct.damage() {
            findings.push(format!("case {case}: damage: {d}; sequence: {}", shown()));
        }
    }
    eprintln!(
        "differential fuzzer: {cases} sequences in {:.1?}, {ran} statements run by the server, \
         {refused} refusals ({in_place} in place), {} findings",
        started.elapsed(),
        findings.len()
    );
    assert!(ran > 0, "the server ran nothing: the fuzzer tested nothing");
    assert!(
        refused > 0,
        "nothing was refused: the fuzzer sent nothing hostile"
    );
    assert!(findings.is_empty(), "seed {seed}:\n{}", findings.join("\n"));
}

/// `text` as the grammar pieces it was joined from (squeezed); the whole text when it is not
/// a join of known pieces.
fn split_known(text: &str) -> Vec<String> {
    let all: Vec<String> = DENIED
        .iter()
        .chain(CONTEXTUAL)
        .chain(BENIGN)
        .map(|p| squeeze(p))
        .collect();
    let mut rest = squeeze(text);
    let mut out = Vec::new();
    'outer: while !rest.is_empty() {
        // Longest piece first, so "DELETE FROM victims WHERE true" is not read as
        // "DELETE FROM victims" followed by garbage.
        let mut best: Option<&String> = None;
        for p in &all {
            if rest.starts_with(p.as_str()) && best.is_none_or(|b| p.len() > b.len()) {
                best = Some(p);
            }
        }
        match best {
            Some(p) => {
                out.push(p.clone());
                rest = rest[p.len()..].to_owned();
            }
            None => {
                out.push(rest.clone());
                break 'outer;
            }
        }
    }
    out
}

/// Wait until a new session sees `log_statement = all` (the reload is asynchronous).
fn wait_for_logging(cluster: &PgCluster) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut w =
            PgWire::connect_unix(cluster.socket_dir(), cluster.port(), cluster.user(), "app")
                .unwrap();
        let out = w.simple("show log_statement").unwrap();
        if out
            .iter()
            .any(|m| m.tag == b'D' && m.body.ends_with(b"all"))
        {
            return;
        }
        assert!(Instant::now() < deadline, "log_statement did not change");
        std::thread::sleep(Duration::from_millis(20));
    }
}
