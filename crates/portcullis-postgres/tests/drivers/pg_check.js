// node-postgres through the gateway: parameters, a named prepared statement, a
// transaction and an error. Connection settings come from the PG* environment.
const assert = require("assert");
const { Client } = require("pg");

(async () => {
  const client = new Client({ ssl: false });
  await client.connect();
  let r = await client.query("select $1::int + 1 as n, $2::text as s", [41, "héllo"]);
  assert.deepStrictEqual(r.rows[0], { n: 42, s: "héllo" });
  for (let i = 0; i < 10; i++) {
    r = await client.query({ name: "double", text: "select $1::int * 2 as d", values: [i] });
    assert.strictEqual(r.rows[0].d, i * 2);
  }
  await client.query("create temp table t (id int)");
  await client.query("begin");
  await client.query("insert into t values (1)");
  await client.query("commit");
  await client.query("begin");
  await client.query("insert into t values (2)");
  await client.query("rollback");
  r = await client.query("select array_agg(id) as ids from t");
  assert.deepStrictEqual(r.rows[0].ids, [1]);
  try {
    await client.query("select 1/0");
    assert.fail("expected an error");
  } catch (e) {
    assert.strictEqual(e.code, "22012");
  }
  r = await client.query("select 7 as seven");
  assert.strictEqual(r.rows[0].seven, 7);
  await client.end();
  console.log("ok node-postgres");
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
