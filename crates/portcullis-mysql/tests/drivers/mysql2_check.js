// node mysql2 with execute(), i.e. prepared statements over the binary protocol
// (COM_STMT_PREPARE / COM_STMT_EXECUTE): a temporary table, typed values with NULLs, an
// emoji, a blob holding every byte value, JSON, DECIMAL and DATETIME(6) round-tripped
// through parameters; an error; 1000 rows.
//
// Connection: MYSQL_HOST, MYSQL_PORT, MYSQL_USER, MYSQL_PASSWORD, MYSQL_DATABASE; with
// MYSQL_SSL_CA (a CA PEM file) it connects with TLS and verifies the server's certificate
// chain (rejectUnauthorized) and, right after connecting, that MYSQL_HOST is in its SANs
// (tls.checkServerIdentity). Not mysql2's verifyIdentity: for a host given as an IP
// mysql2 passes no servername to tls.connect, so Node checks the certificate against
// "localhost" instead of the IP. (So the host name is checked after the login, the chain
// before it.) Without MYSQL_SSL_CA TLS is off.
//
// Authentication: default options. Over TLS the gateway asks for caching_sha2_password's
// full authentication, which mysql2 answers by sending the password inside TLS. Without TLS
// (MYSQL_CLEARTEXT=1, for a gateway on loopback that allows plaintext tokens) the gateway
// switches to mysql_clear_password, which mysql2 refuses (MYSQL_CLEARTEXT_PLUGIN_NOT_ENABLED)
// unless `enableCleartextPlugin: true` is set: only then is it set.
//
// One line per check on stdout, every value as `type:value` (strings JSON-quoted, Buffers
// in hex; dateStrings keeps DATETIME(6) exact), so that a run straight against the
// database and a run through the gateway print the same text.
"use strict";
const assert = require("assert");
const crypto = require("crypto");
const fs = require("fs");
const tls = require("tls");
const mysql = require("mysql2/promise");

const BLOB = Buffer.concat([Buffer.from([...Array(256).keys()]), Buffer.from([...Array(44).keys()])]);
const JSON_DOC = '{"a": 1, "b": [true, null, "x"], "c": "\\u00e9"}';
const ROWS = [
  [1, "12345678.1234", "2024-02-29 13:14:15.123456", BLOB, JSON_DOC, "héllo 🦀", 42],
  [2, null, null, null, null, null, null],
  [3, "-0.0001", "1999-12-31 23:59:59.999999", Buffer.alloc(0), "[]", "it's \"quoted\" \\ and\nnew line", -2147483648],
];

function fmt(v) {
  if (v === null) return "null";
  if (Buffer.isBuffer(v)) return `Buffer:${v.toString("hex")}`;
  if (typeof v === "string") return `string:${JSON.stringify(v)}`;
  if (v instanceof Date) return `Date:${v.toISOString()}`;
  if (typeof v === "object") return `json:${JSON.stringify(v)}`;
  return `${typeof v}:${String(v)}`;
}

async function main() {
  const env = process.env;
  const ca = env.MYSQL_SSL_CA;
  const conn = await mysql.createConnection({
    host: env.MYSQL_HOST,
    port: Number(env.MYSQL_PORT),
    user: env.MYSQL_USER,
    password: env.MYSQL_PASSWORD || "",
    database: env.MYSQL_DATABASE,
    charset: "utf8mb4_general_ci",
    dateStrings: true,
    ssl: ca ? { ca: fs.readFileSync(ca), rejectUnauthorized: true } : undefined,
    enableCleartextPlugin: env.MYSQL_CLEARTEXT === "1",
  });
  if (ca) {
    const stream = conn.connection.stream;
    assert.ok(stream instanceof tls.TLSSocket && stream.authorized, "a verified TLS connection");
    const mismatch = tls.checkServerIdentity(env.MYSQL_HOST, stream.getPeerCertificate());
    if (mismatch) throw mismatch;
  }

  await conn.execute(
    "CREATE TEMPORARY TABLE t (id INT PRIMARY KEY, d DECIMAL(12,4), ts DATETIME(6), b BLOB," +
      " j JSON, s VARCHAR(100) CHARACTER SET utf8mb4, n INT NULL)",
  );
  console.log("create ok");
  for (const row of ROWS) {
    const [res] = await conn.execute("INSERT INTO t (id, d, ts, b, j, s, n) VALUES (?, ?, ?, ?, ?, ?, ?)", row);
    console.log(`insert id=${row[0]} rowcount=${res.affectedRows}`);
    assert.strictEqual(res.affectedRows, 1);
  }

  const [rows, fields] = await conn.execute("SELECT id, d, ts, b, j, s, n FROM t WHERE id >= ? ORDER BY id", [1]);
  // extendedFormat is MariaDB's extended column metadata (MARIADB_CLIENT_EXTENDED_METADATA):
  // "json" for the JSON column, which mysql2 then parses into an object.
  console.log("columns " + fields.map((f) => `${f.name}:${f.columnType}:${f.extendedFormat || ""}`).join(" "));
  const got = rows.map((r) => [r.id, r.d, r.ts, r.b, r.j, r.s, r.n]);
  for (const r of got) console.log("row " + r.map(fmt).join(" "));
  const asText = (j) => (j === null || typeof j === "string" ? j : JSON.stringify(j));
  assert.deepStrictEqual(
    got.map((r) => [...r.slice(0, 4), asText(r[4]), ...r.slice(5)]),
    ROWS.map((r) => [...r.slice(0, 4), r[4] === null ? null : JSON.stringify(JSON.parse(r[4])), ...r.slice(5)]),
    "rows read back as written",
  );

  try {
    await conn.execute("SELECT * FROM portcullis_missing_table WHERE id = ?", [1]);
    assert.fail("expected an error");
  } catch (e) {
    if (e instanceof assert.AssertionError) throw e;
    console.log(`error errno=${e.errno} sqlstate=${e.sqlState} code=${e.code}`);
    assert.strictEqual(e.errno, 1146);
  }
  const [after] = await conn.execute("SELECT ? + 1 AS n", [41]);
  console.log("after error " + fmt(after[0].n));

  const [seq] = await conn.execute(
    "SELECT seq, concat('row', seq) AS s FROM seq_1_to_1000 WHERE seq >= ? ORDER BY seq",
    [1],
  );
  const sum = seq.reduce((acc, r) => acc + Number(r.seq), 0);
  const digest = crypto.createHash("sha256").update(seq.map((r) => String(r.s)).join("")).digest("hex");
  const first = seq[0], last = seq[seq.length - 1];
  console.log(`first ${fmt(first.seq)} ${fmt(first.s)} last ${fmt(last.seq)} ${fmt(last.s)}`);
  console.log(`seq count=${seq.length} sum=${sum} sha256=${digest}`);
  assert.strictEqual(seq.length, 1000);
  await conn.end();
  console.log("OK");
}

main().catch((e) => {
  console.error(e);
  console.error("mysql2_check: FAILED (see the error above)");
  process.exit(1);
});
