//! `portcullis demo`: a self-contained tour on one machine. It starts a throwaway PostgreSQL
//! with sample data holding (fake) personal data, runs the gateway in-process in front of
//! it — two static identities (an analyst and a DBA), masking on (the DBA exempt), a no-DROP
//! rule, an approval rule for DELETE/UPDATE without WHERE, the audit trail in a JSONL file —,
//! prints the exact command for each of the five outcomes (masked, clear, blocked, approved,
//! audited), and on Ctrl-C stops everything and removes the temporary data.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use portcullis_identity::hash_token;
use portcullis_testkit::{PgCluster, free_port};
use tokio::signal::unix::{SignalKind, signal};

use crate::config;
use crate::run::{Bound, Gateway};

/// The sample schema and rows, loaded into database `app`. Card numbers are the card
/// networks' published test numbers (they pass the Luhn check); e-mail addresses use
/// reserved example domains; phone numbers are in the fictional 555-01xx range.
const SAMPLE_DATA: &str = r"
create table customers (
    id          integer primary key,
    name        text not null,
    email       text not null,
    phone       text,
    card_number text
);
create table orders (
    id          integer primary key,
    customer_id integer not null references customers (id),
    amount      numeric(10, 2) not null,
    created_at  timestamptz not null
);
insert into customers (id, name, email, phone, card_number) values
    (1,  'Ada Lovelace',      'ada.lovelace@example.com',   '+1 202-555-0101', '4111 1111 1111 1111'),
    (2,  'Grace Hopper',      'grace.hopper@example.org',   '+1 202-555-0102', '5555 5555 5555 4444'),
    (3,  'Alan Turing',       'alan.turing@example.net',    '+44 20 7946 0103', '3782 822463 10005'),
    (4,  'Katherine Johnson', 'kjohnson@example.com',       '+1 757-555-0104', '4012 8888 8888 1881'),
    (5,  'Edsger Dijkstra',   'edsger@example.nl',          '+31 20 555 0105', '6011 1111 1111 1117'),
    (6,  'Barbara Liskov',    'barbara.liskov@example.edu', '+1 617-555-0106', '5105 1051 0510 5100'),
    (7,  'Donald Knuth',      'knuth@example.org',          '+1 650-555-0107', '3530 1113 3330 0000'),
    (8,  'Margaret Hamilton', 'mhamilton@example.com',      '+1 617-555-0108', '4000 0566 5566 5556'),
    (9,  'Linus Torvalds',    'linus@example.fi',           '+358 40 555 0109', '2223 0031 2200 3222'),
    (10, 'Radia Perlman',     'radia.perlman@example.com',  '+1 425-555-0110', '6200 0000 0000 0005');
insert into orders (id, customer_id, amount, created_at)
select n, 1 + (n * 7) % 10, round((10 + (n * 37) % 490)::numeric + 0.99, 2),
       timestamptz '2024-01-01 09:00+00' + n * interval '17 hours'
from generate_series(1, 40) as n;
";

/// `portcullis demo [--port N]`.
pub(crate) async fn demo(port: Option<u16>) -> ExitCode {
    // Installed first: Ctrl-C at any point below reaches the cleanup, not the default
    // handler (which would leave the gateway's part of the tour half-stopped).
    let (mut int, mut term) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(i), Ok(t)) => (i, t),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("portcullis demo: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };

    // A port that is taken fails the demo before anything starts.
    if let Some(port) = port
        && let Err(e) = std::net::TcpListener::bind(("127.0.0.1", port))
    {
        eprintln!(
            "portcullis demo: port {port} cannot be used: {e} (choose another with --port, or leave it out)"
        );
        return ExitCode::from(2);
    }
    println!("starting PostgreSQL...");
    let cluster = match tokio::task::spawn_blocking(PgCluster::start).await {
        Ok(Ok(cluster)) => cluster,
        Ok(Err(e)) => {
            eprintln!("portcullis demo: cannot start PostgreSQL: {e}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("portcullis demo: cannot start PostgreSQL: {e}");
            return ExitCode::FAILURE;
        }
    };
    // From here on every path ends in `stop`, which drops the cluster and the trail's
    // directory: that stops the server and removes both.
    let trail_dir = match tempfile::Builder::new()
        .prefix("portcullis-demo-")
        .tempdir()
    {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("portcullis demo: cannot make a temporary directory: {e}");
            stop(cluster, None).await;
            return ExitCode::FAILURE;
        }
    };
    let code = tour(&cluster, port, trail_dir.path(), &mut int, &mut term).await;
    stop(cluster, Some(trail_dir)).await;
    code
}

async fn tour(
    cluster: &PgCluster,
    port: Option<u16>,
    dir: &Path,
    int: &mut tokio::signal::unix::Signal,
    term: &mut tokio::signal::unix::Signal,
) -> ExitCode {
    println!("loading sample data...");
    let mut psql = cluster.psql("app");
    psql.args(["-c", SAMPLE_DATA]);
    match tokio::task::spawn_blocking(move || psql.output()).await {
        Ok(Ok(out)) if out.status.success() => {}
        Ok(Ok(out)) => {
            eprintln!(
                "portcullis demo: loading the sample data failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            return ExitCode::FAILURE;
        }
        Ok(Err(e)) => {
            eprintln!("portcullis demo: cannot run psql: {e}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("portcullis demo: cannot run psql: {e}");
            return ExitCode::FAILURE;
        }
    }

    println!("starting the gateway...");
    let analyst = random_token();
    let dba = random_token();
    let gateway_port = port.unwrap_or_else(free_port);
    let admin_port = free_port();
    let trail = dir.join("audit.jsonl");
    let text = demo_config(cluster, gateway_port, admin_port, &analyst, &dba, &trail);
    let config = match config::parse(&text, "<demo configuration>", Path::new("."), &|_| None) {
        Ok(config) => config,
        Err(problems) => {
            eprintln!("portcullis demo: internal configuration error:\n{problems}");
            return ExitCode::FAILURE;
        }
    };
    let (gateway, bound) = match Gateway::start(&config).await {
        Ok(started) => started,
        Err(e) => {
            eprintln!("portcullis demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut gateway_addr = format!("127.0.0.1:{gateway_port}");
    let mut admin_addr = format!("127.0.0.1:{admin_port}");
    for b in &bound {
        match b {
            Bound::Postgres { addr, .. } => gateway_addr = addr.to_string(),
            Bound::Admin { addr } => admin_addr = addr.to_string(),
        }
    }
    print_tour(cluster, &gateway_addr, &admin_addr, &analyst, &dba, &trail);

    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    println!();
    println!("stopping...");
    gateway
        .shutdown(async {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        })
        .await;
    ExitCode::SUCCESS
}

async fn stop(cluster: PgCluster, dir: Option<tempfile::TempDir>) {
    // Dropping stops the server and waits for it: blocking work.
    match tokio::task::spawn_blocking(move || drop((cluster, dir))).await {
        Ok(()) => println!("stopped; temporary data removed"),
        Err(e) => eprintln!("portcullis demo: cleaning up failed: {e}"),
    }
}

/// A fresh random token: 24 random bytes, hex.
fn random_token() -> String {
    let mut bytes = [0u8; 24];
    rand::fill(&mut bytes[..]);
    hex::encode(bytes)
}

/// The gateway's configuration for the tour, as a `portcullis.toml` would hold it.
fn demo_config(
    cluster: &PgCluster,
    gateway_port: u16,
    admin_port: u16,
    analyst: &str,
    dba: &str,
    trail: &Path,
) -> String {
    format!(
        r#"[gateway]
drain_timeout = "3s"

[admin]
listen = "127.0.0.1:{admin_port}"

[[identity.tokens]]
name = "analyst"
sha256 = "{analyst}"
groups = ["analysts"]

[[identity.tokens]]
name = "dba"
sha256 = "{dba}"
groups = ["dba"]

[[postgres]]
name = "demo"
listen = "127.0.0.1:{gateway_port}"
allow_plaintext_tokens_on_loopback = true
databases = ["app"]
[postgres.upstream]
host = {host}
port = {port}
user = {user}
password = {password}
tls = "disable"

[policy]
[[policy.rules]]
name = "no-drop"
statements = ["drop", "truncate"]
action = "deny"
message = "DROP and TRUNCATE are not allowed through the gateway"

[[policy.rules]]
name = "unbounded-writes"
statements = ["delete", "update"]
without_where = true
action = "approve"
approvers = ["dba"]
message = "DELETE or UPDATE without WHERE needs a DBA's approval"

[approvals]
timeout = "10m"

[masking]
exempt_groups = ["dba"]

[audit]
[[audit.sinks]]
kind = "jsonl"
path = {trail}
"#,
        analyst = hash_token(analyst),
        dba = hash_token(dba),
        host = toml_string(cluster.host()),
        port = cluster.port(),
        user = toml_string(cluster.user()),
        password = toml_string(cluster.password()),
        trail = toml_string(&trail.display().to_string()),
    )
}

/// A TOML string literal whose `${` is not taken for a variable.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.replace("${", "$${")).to_string()
}

fn print_tour(
    cluster: &PgCluster,
    gateway: &str,
    admin: &str,
    analyst: &str,
    dba: &str,
    trail: &Path,
) {
    let psql = psql_command();
    let me = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "portcullis".into());
    let (host, port) = gateway.rsplit_once(':').unwrap_or((gateway, "6432"));
    let as_analyst =
        format!("PGPASSWORD={analyst} {psql} \"host={host} port={port} dbname=app user=alice\"");
    let as_dba = format!("PGPASSWORD={dba} {psql} \"host={host} port={port} dbname=app user=bob\"");
    let select = "select name, email, phone, card_number from customers order by id limit 3";
    let trail = trail.display();
    println!(
        r#"
Portcullis demo is running.

  PostgreSQL (throwaway, sample data in database "app"): {pg_host}:{pg_port}
  gateway:  {gateway}
  admin:    http://{admin}/healthz  http://{admin}/metrics
  identities: "analyst" (groups ["analysts"]) and "dba" (groups ["dba"]), static tokens
  audit trail: {trail}

Try each outcome (drop `-c "..."` for an interactive psql):

1. Masked: the analyst's results have personal data masked as they stream.

  $ {as_analyst} -c "{select}"

2. Clear: the DBA is exempt from masking (exempt_groups = ["dba"]).

  $ {as_dba} -c "{select}"

3. Blocked: rule "no-drop" refuses it, nothing runs (ERROR 42501).

  $ {as_analyst} -c "drop table orders"

4. Approved: a DELETE without WHERE waits for a DBA (rule "unbounded-writes"); psql shows
   the request id in a NOTICE and waits. In a second terminal, as the DBA:

  $ {as_analyst} -c "delete from orders"
  $ {me} approvals list --admin http://{admin} --token {dba}
  $ {me} approvals approve <ID> --admin http://{admin} --token {dba}

5. Audited: every session and command is in a hash-chained trail.

  $ {me} audit verify {trail} --live
  $ {me} audit show {trail}

A wrong token is refused (FATAL 28P01):

  $ PGPASSWORD=wrong {psql} "host={host} port={port} dbname=app user=alice" -c "select 1"

Watch the gateway's counters:

  $ curl -s http://{admin}/metrics

Press Ctrl-C to stop; the temporary database and trail are removed."#,
        pg_host = cluster.host(),
        pg_port = cluster.port(),
    );
}

/// `psql` if the shell will find it, else its full path (Debian keeps it beside the server).
fn psql_command() -> String {
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join("psql").is_file()))
        .unwrap_or(false);
    if on_path {
        return "psql".into();
    }
    PgCluster::bin("psql")
        .map(|p: PathBuf| p.display().to_string())
        .unwrap_or_else(|_| "psql".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_strings_are_quoted_and_not_expanded() {
        for original in ["a\"b'c", "x${HOME}", "back\\slash"] {
            let quoted = toml_string(original);
            let parsed: toml::Value = toml::from_str(&format!("v = {quoted}")).unwrap();
            let v = parsed.get("v").and_then(|v| v.as_str()).unwrap();
            assert_eq!(config::expand(v, &|_| None).unwrap(), original);
        }
    }

    #[test]
    fn tokens_are_random_hex() {
        let a = random_token();
        assert_eq!(a.len(), 48);
        assert_ne!(a, random_token());
    }
}
