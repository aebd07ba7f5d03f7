"""mysql-connector-python with cursor(prepared=True), i.e. the binary protocol
(COM_STMT_PREPARE / COM_STMT_EXECUTE): a temporary table, typed values with NULLs, an
emoji, a blob holding every byte value, JSON, DECIMAL and DATETIME(6) round-tripped
through parameters; an error; 1000 rows.

Connection: MYSQL_HOST, MYSQL_PORT, MYSQL_USER, MYSQL_PASSWORD, MYSQL_DATABASE; with
MYSQL_SSL_CA (a CA PEM file) it connects with TLS and verifies the server's certificate
and host name (ssl_verify_cert, ssl_verify_identity); without it TLS is off.

Authentication: default options. Over TLS the gateway asks for caching_sha2_password's
full authentication, which both implementations answer by sending the password inside
TLS. MYSQL_PURE=0 uses the C extension (the bundled libmysqlclient), anything else the
pure-Python implementation.

One line per check on stdout, values as repr() of what the connector decoded (bytearray
shown as bytes), so that a run straight against the database and a run through the
gateway print the same text.
"""
import datetime
import decimal
import hashlib
import os
import sys
import traceback

import mysql.connector
from mysql.connector import errors

BLOB = bytes(range(256)) + bytes(range(44))  # 300 bytes, every byte value
JSON_DOC = '{"a": 1, "b": [true, null, "x"], "c": "\\u00e9"}'
ROWS = [
    (1, decimal.Decimal("12345678.1234"), datetime.datetime(2024, 2, 29, 13, 14, 15, 123456),
     BLOB, JSON_DOC, "héllo 🦀", 42),
    (2, None, None, None, None, None, None),
    (3, decimal.Decimal("-0.0001"), datetime.datetime(1999, 12, 31, 23, 59, 59, 999999),
     b"", "[]", "it's \"quoted\" \\ and\nnew line", -2147483648),
]


def connect():
    kwargs = dict(
        host=os.environ["MYSQL_HOST"],
        port=int(os.environ["MYSQL_PORT"]),
        user=os.environ["MYSQL_USER"],
        password=os.environ.get("MYSQL_PASSWORD", ""),
        database=os.environ["MYSQL_DATABASE"],
        use_pure=os.environ.get("MYSQL_PURE", "1") != "0",
        charset="utf8mb4",
        # The connector's default utf8mb4 collation (utf8mb4_0900_ai_ci) is MySQL 8's and
        # MariaDB has none of that name.
        collation="utf8mb4_general_ci",
        autocommit=True,
    )
    ca = os.environ.get("MYSQL_SSL_CA")
    if ca:
        kwargs.update(ssl_ca=ca, ssl_verify_cert=True, ssl_verify_identity=True)
    else:
        kwargs.update(ssl_disabled=True)
    return mysql.connector.connect(**kwargs)


def plain(v):
    return bytes(v) if isinstance(v, bytearray) else v


def check(ok, what):
    if not ok:
        raise AssertionError(what)


def main():
    sys.stdout.reconfigure(encoding="utf-8")  # the same bytes whatever the locale
    conn = connect()
    cur = conn.cursor(prepared=True)
    cur.execute(
        "CREATE TEMPORARY TABLE t (id INT PRIMARY KEY, d DECIMAL(12,4), ts DATETIME(6), b BLOB,"
        " j JSON, s VARCHAR(100) CHARACTER SET utf8mb4, n INT NULL)"
    )
    print("create ok")
    for row in ROWS:
        cur.execute("INSERT INTO t (id, d, ts, b, j, s, n) VALUES (?, ?, ?, ?, ?, ?, ?)", row)
        print(f"insert id={row[0]} rowcount={cur.rowcount}")
        check(cur.rowcount == 1, "one row inserted")

    cur.execute("SELECT id, d, ts, b, j, s, n FROM t WHERE id >= ? ORDER BY id", (1,))
    print("columns", [(c[0], c[1]) for c in cur.description])
    got = [tuple(plain(v) for v in r) for r in cur.fetchall()]
    for row in got:
        print("row", repr(row))
    check(got == ROWS, f"rows read back as written: {got!r}")

    try:
        cur.execute("SELECT * FROM portcullis_missing_table WHERE id = ?", (1,))
        cur.fetchall()
        raise AssertionError("expected an error")
    except errors.ProgrammingError as e:
        print(f"error errno={e.errno} sqlstate={e.sqlstate}")
        check(e.errno == 1146, "errno 1146")
    cur.execute("SELECT ? + 1", (41,))
    print("after error", tuple(plain(v) for v in cur.fetchone()))

    cur.execute("SELECT seq, concat('row', seq) FROM seq_1_to_1000 WHERE seq >= ? ORDER BY seq", (1,))
    rows = [tuple(plain(v) for v in r) for r in cur.fetchall()]
    text = [r[1].decode() if isinstance(r[1], bytes) else r[1] for r in rows]
    digest = hashlib.sha256("".join(text).encode()).hexdigest()
    print("first", repr(rows[0]), "last", repr(rows[-1]))
    print(f"seq count={len(rows)} sum={sum(r[0] for r in rows)} sha256={digest}")
    check(len(rows) == 1000, "1000 rows")
    cur.close()
    conn.close()
    print("OK")


if __name__ == "__main__":
    try:
        main()
    except Exception:
        traceback.print_exc()
        print("connector_check: FAILED (see the traceback above)", file=sys.stderr)
        sys.exit(1)
