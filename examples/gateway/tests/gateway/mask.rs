//! Masking through the `portcullis` binary against a real PostgreSQL: planted personal data
//! must not reach a non-exempt client by any path the layer covers, near-misses come through
//! unchanged, an exempt identity sees clear values, and the trail says what was masked.

use std::time::Duration;

use portcullis_testkit::PgCluster;
use tokio_postgres::{AsyncMessage, NoTls};

use super::Gateway;

use super::policy::{ALICE, DANA};

const EMAIL: &str = "jane.doe@example.com";
const CARD: &str = "4242 4242 4242 4242";
const SSN: &str = "123-45-6789";
/// Look-alikes that must pass unchanged: a card failing Luhn, an invalid SSN area.
const NEAR_CARD: &str = "4242 4242 4242 4241";
const NEAR_SSN: &str = "666-12-3456";

async fn cluster() -> PgCluster {
    let cluster = tokio::task::spawn_blocking(PgCluster::start)
        .await
        .unwrap()
        .expect("PostgreSQL is needed for this test");
    let sql = format!(
        "create table customers (id int primary key, name text, email text unique, card text, ssn text, card_num bigint);
         insert into customers values
           (1, 'Jane Doe', '{EMAIL}', '{CARD}', '{SSN}', 4111111111111111),
           (2, 'Near Miss', 'not an email', '{NEAR_CARD}', '{NEAR_SSN}', 4111111111111112);"
    );
    let out = cluster.psql("app").args(["-c", &sql]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cluster
}

async fn start(cluster: &PgCluster, trail: &std::path::Path) -> (Gateway, u16, tempfile::TempDir) {
    let extra = format!(
        "[masking]\nexempt_groups = [\"dba\"]\n[[masking.columns]]\nmatch = \"name\"\nstrategy = \"partial\"\n[[masking.columns]]\nmatch = \"public.customers.ssn\"\nstrategy = \"null\"\n\n[audit]\n[[audit.sinks]]\nkind = \"jsonl\"\npath = \"{}\"\n",
        trail.display()
    );
    let (gateway, gw, _admin, dir) = super::policy::start(cluster, &extra).await;
    (gateway, gw, dir)
}

fn psql(
    cluster: &PgCluster,
    port: u16,
    user: &str,
    token: &str,
    sql: &str,
) -> (bool, String, String) {
    let out = super::policy::psql(cluster, port, user, token)
        .args(["-At", "-c", sql])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Fails if any planted value shows in `text`.
fn no_leak(what: &str, text: &str) {
    for secret in [EMAIL, CARD, SSN, "4111111111111111", "Jane Doe"] {
        assert!(!text.contains(secret), "{what} leaked {secret:?}:\n{text}");
    }
}

async fn connect(
    port: u16,
    user: &str,
    token: &str,
) -> (
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let conninfo = format!("host=127.0.0.1 port={port} user={user} password={token} dbname=app");
    let (client, mut connection) = tokio_postgres::connect(&conninfo, NoTls).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(m)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            let text = match m {
                AsyncMessage::Notice(n) => {
                    format!(
                        "notice: {} | {}",
                        n.message(),
                        n.detail().unwrap_or_default()
                    )
                }
                AsyncMessage::Notification(n) => format!("notification: {}", n.payload()),
                _ => continue,
            };
            let _ = tx.send(text);
        }
    });
    (client, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_data_is_masked_on_every_path() {
    let cluster = cluster().await;
    let trail_dir = tempfile::tempdir().unwrap();
    let trail = trail_dir.path().join("trail.jsonl");
    let (mut gateway, gw, _dir) = start(&cluster, &trail).await;

    // psql, text format: masked, near-misses unchanged.
    let (ok, out, err) = psql(
        &cluster,
        gw,
        "alice",
        ALICE,
        "select name, email, card, ssn, card_num from customers order by id",
    );
    assert!(ok, "{err}");
    no_leak("psql", &out);
    assert!(out.contains("j***@example.com"), "{out}");
    assert!(out.contains("**** **** **** 4242"), "{out}");
    assert!(
        out.contains(NEAR_CARD) && out.contains("4111111111111112"),
        "near-misses changed:\n{out}"
    );
    assert!(
        !out.contains(NEAR_SSN),
        "the ssn column is NULL by rule:\n{out}"
    );
    assert!(
        out.contains("**** Miss") && out.contains("**** ***"),
        "the name column rule: {out}"
    );
    // Content detection on an SSN in a column without a rule.
    let (ok, out, err) = psql(
        &cluster,
        gw,
        "alice",
        ALICE,
        "select 'ssn ' || ssn, 'near ' || ssn from customers order by id",
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("ssn ***-**-6789") && out.contains(NEAR_SSN),
        "{out}"
    );
    // The exempt DBA sees clear values.
    let (ok, out, _) = psql(
        &cluster,
        gw,
        "dana",
        DANA,
        "select email, card from customers where id = 1",
    );
    assert!(ok && out.contains(EMAIL) && out.contains(CARD), "{out}");

    // A rule over the source column follows it through an alias (the gateway looks the
    // table OID up in the catalog), for simple and extended protocol.
    let (ok, out, err) = psql(
        &cluster,
        gw,
        "alice",
        ALICE,
        "select id, ssn as x from customers order by id",
    );
    assert!(ok, "{err}");
    assert_eq!(out, "1|\n2|\n", "ssn under a null rule, through an alias");

    // Computed values and JSON: content detection still finds them.
    for sql in [
        "select row_to_json(c) from customers c",
        "select json_agg(email) from customers",
        "select 'contact: ' || email || ' / ' || card from customers",
        "select upper(email) from customers",
    ] {
        let (ok, out, err) = psql(&cluster, gw, "alice", ALICE, sql);
        assert!(ok, "{sql}: {err}");
        assert!(!out.to_lowercase().contains(EMAIL), "{sql}: {out}");
        assert!(!out.contains(CARD), "{sql}: {out}");
    }

    // COPY TO STDOUT in text and CSV: read field by field, so column rules apply too.
    for (sql, row1) in [
        (
            "copy customers to stdout",
            // card_num is a bigint: a number masked is NULL (a partly masked number is none).
            "1\t**** ***\tj***@example.com\t**** **** **** 4242\t\\N\t\\N",
        ),
        (
            "copy (select * from customers order by id) to stdout with (format csv, header)",
            "1,**** ***,j***@example.com,**** **** **** 4242,,",
        ),
    ] {
        let (ok, out, err) = psql(&cluster, gw, "alice", ALICE, sql);
        assert!(ok, "{sql}: {err}");
        no_leak(sql, &out);
        assert!(out.lines().any(|l| l == row1), "{sql}: {out}");
        assert!(out.contains(NEAR_CARD), "{sql}: near-miss unchanged: {out}");
    }
    // Custom COPY options cannot be read by column: refused under column rules, not leaked.
    let (ok, _, err) = psql(
        &cluster,
        gw,
        "alice",
        ALICE,
        "copy customers to stdout with (format csv, delimiter ';')",
    );
    assert!(!ok && err.contains("cannot be masked by column"), "{err}");
    // Binary COPY: rewritten field by field with the types described by the gateway.
    for sql in [
        "copy customers to stdout with (format binary)",
        "copy (select id, name, email, card, ssn, card_num from customers order by id) to stdout (format binary)",
    ] {
        let out = super::policy::psql(&cluster, gw, "alice", ALICE)
            .args(["-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let raw = out.stdout;
        for secret in [
            EMAIL.as_bytes(),
            CARD.as_bytes(),
            SSN.as_bytes(),
            b"Jane Doe",
            &4111111111111111i64.to_be_bytes(),
        ] {
            assert!(
                !raw.windows(secret.len()).any(|w| w == secret),
                "{sql}: binary COPY leaked {:?}",
                String::from_utf8_lossy(secret)
            );
        }
        let rows = binary_copy_rows(&raw);
        assert_eq!(rows.len(), 2, "{sql}");
        let text = |v: &Option<Vec<u8>>| {
            v.as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
        };
        assert_eq!(
            text(&rows[0][2]).as_deref(),
            Some("j***@example.com"),
            "{sql}"
        );
        assert_eq!(
            text(&rows[0][3]).as_deref(),
            Some("**** **** **** 4242"),
            "{sql}"
        );
        assert_eq!(rows[0][4], None, "{sql}: ssn under a null rule");
        assert_eq!(rows[0][5], None, "{sql}: a card number in a bigint");
        assert_eq!(
            text(&rows[1][3]).as_deref(),
            Some(NEAR_CARD),
            "{sql}: near-miss unchanged"
        );
        assert_eq!(
            rows[1][5].as_deref(),
            Some(&4111111111111112i64.to_be_bytes()[..]),
            "{sql}"
        );
        assert_eq!(rows[1][4], None, "{sql}: the rule nulls every ssn");
    }
    // A binary COPY the gateway cannot describe (not alone in its query) is refused, not leaked.
    let (ok, _, err) = psql(
        &cluster,
        gw,
        "alice",
        ALICE,
        "select 1; copy customers to stdout with (format binary)",
    );
    assert!(!ok && err.contains("cannot be masked"), "{err}");
    // The session goes on after a refusal.
    let (client, _) = connect(gw, "alice", ALICE).await;
    assert!(
        client
            .batch_execute("select 1; copy customers to stdout with (format binary)")
            .await
            .is_err()
    );
    client.batch_execute("select 1").await.unwrap();

    // An error's detail (unique violation), RAISE NOTICE, INSERT ... RETURNING.
    let (ok, _, err) = psql(
        &cluster,
        gw,
        "alice",
        ALICE,
        &format!("insert into customers (id, email) values (3, '{EMAIL}')"),
    );
    assert!(!ok && err.contains("already exists"), "{err}");
    no_leak("unique violation", &err);
    let (_, _, err) = psql(
        &cluster,
        gw,
        "alice",
        ALICE,
        "do $$ begin raise notice 'found %', (select email from customers where id = 1); end $$",
    );
    assert!(err.contains("NOTICE"), "{err}");
    no_leak("RAISE NOTICE", &err);
    let (ok, out, err) = psql(
        &cluster,
        gw,
        "alice",
        ALICE,
        "insert into customers (id, email) values (4, 'new.person@example.org') returning email",
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("n***@example.org") && !out.contains("new.person@"),
        "{out}"
    );

    // tokio-postgres: binary format, a prepared statement executed twice (the second time
    // without a RowDescription), a portal fetched in chunks, a cursor, a notification.
    let (mut client, mut events) = connect(gw, "alice", ALICE).await;
    let stmt = client
        .prepare("select email, card_num from customers where id = $1")
        .await
        .unwrap();
    for _ in 0..2 {
        let row = client.query_one(&stmt, &[&1i32]).await.unwrap();
        let email: String = row.get(0);
        let num: Option<i64> = row.get(1);
        assert_eq!(email, "j***@example.com");
        assert_eq!(num, None, "a card number in a bigint becomes NULL");
    }
    let aliased = client
        .prepare("select ssn as x from customers where id = $1")
        .await
        .unwrap();
    for _ in 0..2 {
        let row = client.query_one(&aliased, &[&2i32]).await.unwrap();
        assert_eq!(
            row.get::<_, Option<String>>(0),
            None,
            "prepared, executed again"
        );
    }
    let tx = client.transaction().await.unwrap();
    let stmt = tx
        .prepare("select email from customers order by id")
        .await
        .unwrap();
    let portal = tx.bind(&stmt, &[]).await.unwrap();
    let mut seen = Vec::new();
    loop {
        let rows = tx.query_portal(&portal, 1).await.unwrap();
        if rows.is_empty() {
            break;
        }
        seen.extend(
            rows.iter()
                .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default()),
        );
    }
    assert!(seen.iter().any(|e| e == "j***@example.com"), "{seen:?}");
    no_leak("portal in chunks", &seen.join("\n"));
    tx.batch_execute("declare c cursor for select email, ssn from customers order by id")
        .await
        .unwrap();
    let fetched = tx.simple_query("fetch 2 from c").await.unwrap();
    let text: Vec<String> = fetched
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some(format!("{:?} {:?}", r.get(0), r.get(1)))
            }
            _ => None,
        })
        .collect();
    no_leak("cursor FETCH", &text.join("\n"));
    tx.commit().await.unwrap();
    client.batch_execute("listen ch").await.unwrap();
    let (other, _) = connect(gw, "dana", DANA).await;
    other
        .batch_execute(&format!("notify ch, 'reach me at {EMAIL}'"))
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        got.contains("notification: reach me at j***@example.com"),
        "{got}"
    );

    // The trail records what was masked, and never the clear values.
    drop((client, other));
    gateway.signal("TERM");
    gateway.wait_exit(Duration::from_secs(20), "no exit").await;
    let text = std::fs::read_to_string(&trail).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("\"layer\":\"mask\"") && l.contains("masked")),
        "no masking decision in the trail"
    );
    assert!(
        !text.contains("4111111111111111"),
        "the trail holds a clear card number"
    );
}

/// The rows of PostgreSQL binary COPY output (signature, flags, extension, tuples, trailer).
fn binary_copy_rows(raw: &[u8]) -> Vec<Vec<Option<Vec<u8>>>> {
    assert!(
        raw.starts_with(b"PGCOPY\n\xff\r\n\0"),
        "no binary COPY signature"
    );
    let ext = u32::from_be_bytes(raw[15..19].try_into().unwrap()) as usize;
    let mut at = 19 + ext;
    let mut rows = Vec::new();
    loop {
        let n = i16::from_be_bytes(raw[at..at + 2].try_into().unwrap());
        at += 2;
        if n == -1 {
            assert_eq!(at, raw.len(), "bytes after the trailer");
            return rows;
        }
        let mut row = Vec::new();
        for _ in 0..n {
            let len = i32::from_be_bytes(raw[at..at + 4].try_into().unwrap());
            at += 4;
            if len < 0 {
                row.push(None);
            } else {
                row.push(Some(raw[at..at + len as usize].to_vec()));
                at += len as usize;
            }
        }
        rows.push(row);
    }
}

/// The first row of `sql`'s result in binary format, through `wire`.
fn binary_row(wire: &mut portcullis_testkit::wire::PgWire, sql: &str) -> Vec<Option<Vec<u8>>> {
    wire.send(&portcullis_testkit::wire::msg::pbe_binary(sql))
        .unwrap();
    let reply = wire.until_ready().unwrap();
    if let Some(e) = reply.iter().find(|m| m.tag == b'E') {
        panic!("{sql}: {:?}", e.field(b'M'));
    }
    let row = reply.iter().find(|m| m.tag == b'D').expect("a row");
    let body = &row.body;
    let n = i16::from_be_bytes([body[0], body[1]]) as usize;
    let mut at = 2;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let len = i32::from_be_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]);
        at += 4;
        if len < 0 {
            out.push(None);
        } else {
            out.push(Some(body[at..at + len as usize].to_vec()));
            at += len as usize;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_results_and_every_message_field_are_read_or_masked_never_passed() {
    use portcullis_testkit::wire::PgWire;

    let cluster = cluster().await;
    let trail_dir = tempfile::tempdir().unwrap();
    let trail = trail_dir.path().join("trail.jsonl");
    let (_gateway, gw, _dir) = start(&cluster, &trail).await;
    let mut direct =
        PgWire::connect_unix(cluster.socket_dir(), cluster.port(), cluster.user(), "app").unwrap();
    let mut wire = PgWire::connect(gw, "alice", "app", ALICE).unwrap();
    let card_be = 4_111_111_111_111_111i64.to_be_bytes();
    let has = |v: &[u8], needle: &[u8]| v.windows(needle.len()).any(|w| w == needle);

    // Numbers holding a card number, in every numeric type: clear directly, NULL here.
    for sql in [
        "select card_num from customers where id = 1",
        "select card_num::numeric from customers where id = 1",
        "select card_num::float8 from customers where id = 1",
    ] {
        assert!(binary_row(&mut direct, sql)[0].is_some(), "{sql} directly");
        assert_eq!(binary_row(&mut wire, sql)[0], None, "{sql} passed in clear");
    }
    // Text inside bytea, arrays and records: masked in place, the planted values gone from
    // every byte the client receives.
    for sql in [
        "select email::bytea from customers where id = 1",
        "select ARRAY[email, card, ssn] from customers where id = 1",
        "select ROW(email, card, ssn, card_num) from customers where id = 1",
        "select ARRAY[card_num] from customers where id = 1",
    ] {
        let there = binary_row(&mut direct, sql)[0].clone().unwrap();
        assert!(
            has(&there, EMAIL.as_bytes()) || has(&there, &card_be),
            "{sql}: nothing planted directly"
        );
        let here = binary_row(&mut wire, sql)[0].clone();
        if let Some(here) = here {
            for secret in [EMAIL.as_bytes(), CARD.as_bytes(), SSN.as_bytes(), &card_be] {
                assert!(!has(&here, secret), "{sql} leaked {secret:?}");
            }
        }
    }
    // Masked in place, not dropped: the array is still an array of the masked texts.
    let array = binary_row(
        &mut wire,
        "select ARRAY[email, card] from customers where id = 1",
    )[0]
    .clone()
    .expect("the array is masked in place");
    assert!(has(&array, b"j***@example.com"), "{array:?}");
    // A client library decodes the masked binary values without error (tokio-postgres reads
    // results in binary format).
    let (client, _notices) = connect(gw, "alice", ALICE).await;
    let row = client
        .query_one(
            "select ARRAY[email, card], email::bytea, card_num, ARRAY[card_num, 7] from customers where id = 1",
            &[],
        )
        .await
        .unwrap();
    let texts: Vec<String> = row.try_get(0).expect("a masked text[] decodes");
    assert!(texts.iter().all(|t| t != EMAIL && t != CARD), "{texts:?}");
    let bytes: Vec<u8> = row.try_get(1).expect("a masked bytea decodes");
    assert!(!has(&bytes, EMAIL.as_bytes()));
    let number: Option<i64> = row.try_get(2).expect("a NULLed int8 decodes");
    assert_eq!(number, None);
    let numbers: Vec<Option<i64>> = row.try_get(3).expect("an int8[] with a NULL decodes");
    assert_eq!(numbers, vec![None, Some(7)]);
    // A whole-row reference: the catalog resolves the row type to the table's columns, so the
    // column rules apply to its fields (name partial, ssn NULL) and the detectors to the rest;
    // the record stays a record.
    let sql = "select c from customers c where id = 1";
    let here = binary_row(&mut wire, sql)[0]
        .clone()
        .expect("the row is masked field by field");
    for secret in [EMAIL.as_bytes(), SSN.as_bytes(), b"Jane Doe", &card_be] {
        assert!(!has(&here, secret), "{sql} leaked {secret:?}");
    }
    assert_eq!(&here[..4], &6i32.to_be_bytes(), "six fields");
    // A type no detector reads: NULL, not passed.
    let sql = "select point(1, 2) from customers where id = 1";
    assert!(binary_row(&mut direct, sql)[0].is_some(), "{sql} directly");
    assert_eq!(binary_row(&mut wire, sql)[0], None, "{sql} passed unread");
    // Near-misses and values no detector could match come through byte for byte.
    for sql in [
        "select card_num::numeric from customers where id = 2",
        "select card_num from customers where id = 2",
        "select 42::numeric, 1.5::float8, true, date '2024-02-29', ARRAY['plain'] from customers where id = 2",
    ] {
        assert_eq!(
            binary_row(&mut wire, sql),
            binary_row(&mut direct, sql),
            "{sql} changed"
        );
    }
    // Every string field of an error (here the constraint's name) and a ParameterStatus
    // (application_name set by set_config) pass the detectors too.
    let out = cluster
        .psql("app")
        .args([
            "-c",
            &format!("create table cc (v int constraint \"{EMAIL}\" check (v > 0))"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    for sql in [
        "insert into cc values (-1)".to_owned(),
        format!("select set_config('application_name', '{EMAIL}', false)"),
    ] {
        wire.send(&portcullis_testkit::wire::msg::query(&sql))
            .unwrap();
        let reply = wire.until_ready().unwrap();
        assert!(
            reply.iter().any(|m| m.tag == b'E' || m.tag == b'S'),
            "{sql}: {reply:?}"
        );
        for m in &reply {
            assert!(
                !has(&m.body, EMAIL.as_bytes()),
                "{sql}: {} leaked {EMAIL}",
                m.tag as char
            );
        }
    }
    // A whole-row reference in text format: the column rules apply to the row's fields (the
    // name, which no detector would find, partially; the ssn NULL), the detectors to the rest,
    // the other fields byte for byte.
    wire.send(&portcullis_testkit::wire::msg::query(
        "select c from customers c where id = 1",
    ))
    .unwrap();
    let reply = wire.until_ready().unwrap();
    let row = reply.iter().find(|m| m.tag == b'D').expect("a row");
    let text = String::from_utf8_lossy(&row.body[6..]).into_owned();
    no_leak("a whole-row reference", &text);
    assert!(
        text.starts_with("(1,\"**") && text.contains(",\"j***@example.com\","),
        "{text}"
    );
    assert!(
        text.contains("\",,\""),
        "the ssn (between card and card_num) is NULL by rule: {text}"
    );
    let direct_row = direct
        .simple("select c from customers c where id = 1")
        .unwrap();
    assert!(
        direct_row
            .iter()
            .any(|m| m.tag == b'D' && has(&m.body, b"Jane Doe")),
        "directly the row shows the name"
    );
    // Statement text in the trail is masked piece by piece: a finding in a comment never
    // hides the code on the next line.
    let sql = format!("SELECT 1; -- -----BEGIN PRIVATE KEY-----\nSELECT 'hidden: {EMAIL}'");
    wire.send(&portcullis_testkit::wire::msg::query(&sql))
        .unwrap();
    wire.until_ready().unwrap();
    let recorded = super::recorded_statements(&trail, "hidden: ");
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert!(
        recorded[0].contains("\nSELECT 'hidden: ") && !recorded[0].contains(EMAIL),
        "{recorded:?}"
    );
    // The trail says values were replaced unread.
    let text = std::fs::read_to_string(&trail).unwrap();
    assert!(text.contains("unreadable="), "{text}");
}

/// The planted values through asyncpg, psycopg 3 and pgJDBC with binary results: what the
/// applications receive (every row printed) holds none of them, and every value decodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_drivers_in_binary_format_receive_no_planted_value() {
    let cluster = cluster().await;
    let trail_dir = tempfile::tempdir().unwrap();
    let trail = trail_dir.path().join("trail.jsonl");
    let (_gateway, gw, _dir) = start(&cluster, &trail).await;
    let queries = [
        "select card_num, card_num::numeric, card_num::float8 from customers where id = 1",
        "select email::bytea, ARRAY[email, card, ssn], ARRAY[card_num] from customers where id = 1",
        "select ROW(email, card, ssn, card_num) from customers where id = 1",
        "select c from customers c where id = 1",
        "select name, email, card, ssn from customers where id = 1",
    ];
    let script = format!(
        r#"
import asyncio, sys
import asyncpg, psycopg
from psycopg.rows import tuple_row
QUERIES = {queries:?}
DSN = "postgresql://alice:{ALICE}@127.0.0.1:{gw}/app?sslmode=disable"
async def with_asyncpg():
    conn = await asyncpg.connect(DSN)
    for q in QUERIES:
        print("asyncpg", repr(await conn.fetch(q)))
    await conn.close()
asyncio.run(with_asyncpg())
with psycopg.connect(DSN) as conn:
    for q in QUERIES:
        cur = conn.cursor(binary=True, row_factory=tuple_row)
        cur.execute(q)
        print("psycopg", repr(cur.fetchall()))
    # Text format: numbers must still read as numbers.
    for q in QUERIES:
        cur = conn.cursor(row_factory=tuple_row)
        cur.execute(q)
        print("psycopg-text", repr(cur.fetchall()))
"#
    );
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args(["-c", &script])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().count(),
        3 * queries.len(),
        "every query answered: {stdout}"
    );
    no_leak("asyncpg and psycopg 3 (binary and text)", &stdout);
    // The masked forms arrive, not only NULLs: the e-mail masked in place in the array.
    assert!(stdout.contains("j***@example.com"), "{stdout}");

    // pgJDBC with binary transfer from the first execution (`prepareThreshold=-1`: server-
    // prepared statements, binary results for the types it reads in binary).
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("LeakCheck.java");
    let list = queries
        .iter()
        .map(|q| format!("{q:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(
        &source,
        format!(
            r#"import java.sql.*;
public class LeakCheck {{
    public static void main(String[] args) throws Exception {{
        String url = "jdbc:postgresql://127.0.0.1:{gw}/app?sslmode=disable&prepareThreshold=-1&binaryTransfer=true";
        String[] queries = {{ {list} }};
        try (Connection c = DriverManager.getConnection(url, "alice", "{ALICE}")) {{
            for (String q : queries) {{
                try (PreparedStatement ps = c.prepareStatement(q); ResultSet rs = ps.executeQuery()) {{
                    StringBuilder line = new StringBuilder("jdbc");
                    int n = rs.getMetaData().getColumnCount();
                    while (rs.next()) {{
                        for (int i = 1; i <= n; i++) {{
                            line.append(" | ").append(rs.getString(i));
                            byte[] raw = rs.getBytes(i);
                            if (raw != null) line.append(" ").append(new String(raw, "UTF-8"));
                        }}
                    }}
                    System.out.println(line);
                }}
            }}
        }}
    }}
}}
"#
        ),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("java")
            .args(["-cp", "/usr/share/java/postgresql.jar"])
            .arg(&source)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().count(), queries.len(), "{stdout}");
    no_leak("pgJDBC (binary transfer)", &stdout);
    assert!(stdout.contains("j***@example.com"), "{stdout}");
}
