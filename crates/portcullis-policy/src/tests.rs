//! The bypass corpus: statements a "no deletes, no drops, no file access" policy must catch,
//! and statements it must let through, classified by the real parser.

use super::*;

/// The test policy: no DELETE or TRUNCATE, no DROP, nothing `admin` (file access, code the
/// text does not show, settings that change how SQL is read).
fn blocked(sql: &str) -> Result<bool, Unparsed> {
    let statements = Classifier::default().classify(sql)?;
    Ok(statements.iter().any(|s| {
        s.has_kind("delete")
            || s.has_kind("truncate")
            || s.has_kind("drop")
            || s.class == Class::Admin
    }))
}

const MUST_BLOCK: &[&str] = &[
    "delete from victims",
    "DELETE FROM victims WHERE true",
    "DeLeTe FrOm victims",
    "delete/**/from victims",
    "delete/* a comment */from/* another */victims",
    "delete\tfrom\nvictims",
    "  DELETE   FROM   victims  ;",
    "delete from public.victims",
    "delete from \"victims\"",
    "delete from only victims",
    "delete from victims where id = 1",
    "delete from victims using other where victims.id = other.id",
    "with x as (delete from victims returning *) select * from x",
    "with x as (select 1) delete from victims",
    "WITH RECURSIVE r AS (SELECT 1) DELETE FROM victims",
    "select 1 from (with d as (delete from victims returning 1) select * from d) s",
    "explain analyze delete from victims",
    "explain (analyze, format json) delete from victims",
    "explain delete from victims",
    "prepare p as delete from victims",
    "select 1; delete from victims",
    "select 1;delete from victims;",
    "/* comment */ delete from victims",
    "-- comment\ndelete from victims",
    "select E'\\''; delete from victims",
    "select $$;$$; delete from victims",
    "select $x$ ; $x$; delete from victims",
    "merge into victims v using src s on v.id = s.id when matched then delete",
    "drop table victims",
    "DROP TABLE IF EXISTS victims CASCADE",
    "drop schema public cascade",
    "drop database app",
    "drop index victims_pkey",
    "drop view v",
    "drop function f()",
    "truncate victims",
    "truncate table victims restart identity",
    "select pg_read_file('/etc/passwd')",
    "select pg_catalog.pg_read_file('/etc/passwd')",
    "select \"pg_read_file\"('/etc/passwd')",
    "SELECT PG_READ_FILE('/etc/passwd')",
    "select U&\"\\0070g_read_file\"('/etc/passwd')",
    "select * from pg_read_file('/etc/passwd')",
    "select pg_read_binary_file('/etc/passwd')",
    "select pg_ls_dir('.')",
    "select pg_stat_file('postgresql.conf')",
    "select lo_import('/etc/passwd')",
    "select lo_export(1234, '/tmp/x')",
    "select (select pg_read_file('/etc/passwd'))",
    "select coalesce(null, pg_read_file('x'))",
    "select 1 where exists (select pg_ls_dir('/'))",
    "insert into log select pg_read_file('x')",
    "update victims set name = pg_read_file('x') where id = 1",
    "create table stolen as select pg_read_file('x') as f",
    "copy victims to '/tmp/out'",
    "copy victims from '/tmp/in'",
    "copy (select 1) to program 'id'",
    "copy victims from program 'cat /etc/passwd'",
    "do $$ begin delete from victims; end $$",
    "do $body$ begin perform 1; end $body$",
    "call cleanup()",
    "select dblink_exec('dbname=app', 'delete from victims')",
    "select * from dblink('dbname=app', 'select 1') as t(a int)",
    "select query_to_xml('delete from victims returning *', true, true, '')",
    "select ts_stat('select to_tsvector(body) from docs')",
    "select set_config('standard_conforming_strings', 'off', false)",
    "set standard_conforming_strings = off",
    "set client_encoding = 'SJIS'",
    "reset all",
    "set role postgres",
    "set session authorization postgres",
    "select pg_terminate_backend(123)",
    "select pg_cancel_backend(pid) from pg_stat_activity",
    "create function f() returns int language sql as 'delete from victims returning 1'",
    "create trigger t after insert on x for each row execute function f()",
    "create rule r as on insert to v do instead delete from victims",
    "execute p",
    "load 'plpgsql'",
    "alter system set log_statement = 'none'",
    "grant all on victims to public",
    "vacuum full victims",
];

const MUST_PASS: &[&str] = &[
    "select 1",
    "select * from victims",
    "select * from victims where id = 1",
    "select 'delete from victims'",
    "select 'drop table victims'",
    "select $$delete from victims$$",
    "select $tag$ pg_read_file('/etc/passwd') $tag$",
    "select E'drop table\\' victims'",
    "select 1 -- delete from victims",
    "select /* drop table victims */ 1",
    "select 'pg_read_file(''x'')'",
    "select 1 as pg_read_file",
    "select pg_read_file from files",
    "select name as \"delete\" from victims",
    "select \"drop\" from odd_columns",
    "insert into victims values (1, 'a')",
    "insert into victims select * from staging",
    "insert into victims values (1, 'a') on conflict do nothing",
    "update victims set name = 'b' where id = 1",
    "update victims set n = n + 1 where id in (select id from other) returning id",
    "select count(*) from victims",
    "select now()",
    "select current_user",
    "select version()",
    "begin",
    "commit",
    "rollback",
    "start transaction isolation level serializable",
    "set search_path = public",
    "set application_name = 'report'",
    "set statement_timeout = '5s'",
    "set transaction read only",
    "show work_mem",
    "explain select * from victims",
    "explain analyze select * from victims",
    "copy victims to stdout",
    "copy victims from stdin",
    "copy (select 1) to stdout with (format csv)",
    "select lower(name) from victims",
    "select * from victims order by id limit 10",
    "with x as (select 1) select * from x",
    "select * from victims v join other o on v.id = o.id",
    "select json_build_object('a', 1)",
    "select array_agg(id) from victims",
    "select id from victims group by id having count(*) > 1",
    "select pg_sleep(0)",
    "select pg_backend_pid()",
    "select * from pg_stat_activity",
    "select has_table_privilege('victims', 'select')",
    "prepare q as select * from victims where id = $1",
    "deallocate q",
    "listen ch",
    "notify ch, 'hello'",
    "unlisten ch",
    "declare c cursor for select 1",
    "fetch 10 from c",
    "close c",
    "create table t (id int primary key)",
    "create index on t (id)",
    "alter table t add column name text",
    "comment on table t is 'delete me later'",
    "select * from victims for update",
    "select generate_series(1, 3)",
    "values (1), (2)",
    "table victims",
    "select exists (select 1 from victims)",
    "select cast('1' as int), '1'::int, interval '1 day'",
    "select to_char(now(), 'YYYY')",
    "select regexp_replace('delete', 'd', 'x')",
    "select 1; select 2",
    "",
];

#[test]
fn the_corpus_is_large_enough() {
    assert!(MUST_BLOCK.len() >= 60, "{}", MUST_BLOCK.len());
    assert!(MUST_PASS.len() >= 60, "{}", MUST_PASS.len());
}

#[test]
fn every_bypass_style_is_caught() {
    let missed: Vec<&str> = MUST_BLOCK
        .iter()
        .copied()
        .filter(|sql| !blocked(sql).unwrap_or_else(|e| panic!("{sql:?}: {e}")))
        .collect();
    assert!(missed.is_empty(), "not blocked: {missed:#?}");
}

#[test]
fn benign_statements_pass() {
    let wrongly: Vec<(&str, String)> = MUST_PASS
        .iter()
        .copied()
        .filter_map(|sql| {
            let statements = Classifier::default()
                .classify(sql)
                .unwrap_or_else(|e| panic!("{sql:?}: {e}"));
            blocked(sql)
                .unwrap_or(true)
                .then(|| (sql, format!("{statements:?}")))
        })
        .collect();
    assert!(wrongly.is_empty(), "blocked: {wrongly:#?}");
}

#[test]
fn what_cannot_be_parsed_is_an_error() {
    for sql in [
        "selec 1",
        "delete victims",
        "select 'unterminated",
        "select $$ unterminated",
        "/* unterminated comment delete from victims",
    ] {
        assert!(Classifier::default().classify(sql).is_err(), "{sql:?}");
    }
}

#[test]
fn statements_are_split_and_described() {
    let c = Classifier::default();
    let s = c
        .classify(
            "select * from a.b join c on true; update t set x = 1; delete from u where id = 2",
        )
        .unwrap();
    assert_eq!(s.len(), 3);
    assert_eq!(s[0].class, Class::Read);
    assert_eq!(
        s[0].tables.iter().map(String::as_str).collect::<Vec<_>>(),
        ["a.b", "c"]
    );
    assert_eq!(s[0].text, "select * from a.b join c on true");
    assert_eq!(s[1].class, Class::Write);
    assert!(s[1].has_kind("update") && s[1].without_where);
    assert_eq!(s[1].text, "update t set x = 1");
    assert!(s[2].has_kind("delete") && !s[2].without_where);
    assert_eq!(s[2].text, "delete from u where id = 2");
    // The reason names the strictest part.
    let s = c
        .classify("select 1 from t where pg_ls_dir('/') is null")
        .unwrap();
    assert_eq!(s[0].reason, "function pg_ls_dir");
    // A function list of one's own.
    let only = Classifier::with_dangerous_functions(["my_exec"]);
    assert_eq!(
        only.classify("select my_exec('x')").unwrap()[0].class,
        Class::Admin
    );
    assert_eq!(
        only.classify("select pg_read_file('x')").unwrap()[0].class,
        Class::Read
    );
}
