"""PyMySQL (the text protocol: parameters are escaped into the SQL on the client side):
a temporary table, typed values with NULLs, an emoji, a blob holding every byte value,
JSON, DECIMAL and DATETIME(6) round-tripped through parameters; an error; 1000 rows.

Connection: MYSQL_HOST, MYSQL_PORT, MYSQL_USER, MYSQL_PASSWORD, MYSQL_DATABASE; with
MYSQL_SSL_CA (a CA PEM file) it connects with TLS and verifies the server's certificate
and host name. MYSQL_CLEARTEXT changes nothing here.

Auth switch to mysql_clear_password: PyMySQL answers it natively, with or without TLS
(Connection._process_auth sends the password followed by a NUL); no option is needed.

One line per check on stdout, values as repr() of what PyMySQL decoded, so that a run
straight against the database and a run through the gateway print the same text.
"""
import decimal
import datetime
import hashlib
import os
import sys
import traceback

import pymysql

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
        charset="utf8mb4",
        autocommit=True,
    )
    ca = os.environ.get("MYSQL_SSL_CA")
    if ca:
        kwargs.update(ssl_ca=ca, ssl_verify_cert=True, ssl_verify_identity=True)
    else:
        kwargs.update(ssl_disabled=True)
    return pymysql.connect(**kwargs)


def check(ok, what):
    if not ok:
        raise AssertionError(what)


def main():
    sys.stdout.reconfigure(encoding="utf-8")  # the same bytes whatever the locale
    conn = connect()
    cur = conn.cursor()
    cur.execute(
        "CREATE TEMPORARY TABLE t (id INT PRIMARY KEY, d DECIMAL(12,4), ts DATETIME(6), b BLOB,"
        " j JSON, s VARCHAR(100) CHARACTER SET utf8mb4, n INT NULL)"
    )
    print("create ok")
    for row in ROWS:
        n = cur.execute("INSERT INTO t (id, d, ts, b, j, s, n) VALUES (%s, %s, %s, %s, %s, %s, %s)", row)
        print(f"insert id={row[0]} rowcount={n}")
        check(n == 1, "one row inserted")

    cur.execute("SELECT id, d, ts, b, j, s, n FROM t WHERE id >= %s ORDER BY id", (1,))
    print("columns", [(c[0], c[1]) for c in cur.description])
    got = cur.fetchall()
    for row in got:
        print("row", repr(tuple(bytes(v) if isinstance(v, bytearray) else v for v in row)))
    check([tuple(r) for r in got] == ROWS, f"rows read back as written: {got!r}")

    try:
        cur.execute("SELECT * FROM portcullis_missing_table WHERE id = %s", (1,))
        raise AssertionError("expected an error")
    except pymysql.err.ProgrammingError as e:
        errno, sqlstate = e.args[0], getattr(e, "sqlstate", None)  # sqlstate: PyMySQL >= 1.1.1
        print(f"error errno={errno} sqlstate={sqlstate}")
        check(errno == 1146, "errno 1146")
    cur.execute("SELECT %s + 1", (41,))
    print("after error", cur.fetchone())

    cur.execute("SELECT seq, concat('row', seq) FROM seq_1_to_1000 WHERE seq >= %s ORDER BY seq", (1,))
    rows = cur.fetchall()
    digest = hashlib.sha256("".join(r[1] for r in rows).encode()).hexdigest()
    print("first", repr(rows[0]), "last", repr(rows[-1]))
    print(f"seq count={len(rows)} sum={sum(r[0] for r in rows)} sha256={digest}")
    check(len(rows) == 1000, "1000 rows")
    conn.close()
    print("OK")


if __name__ == "__main__":
    try:
        main()
    except Exception:
        traceback.print_exc()
        print("pymysql_check: FAILED (see the traceback above)", file=sys.stderr)
        sys.exit(1)
