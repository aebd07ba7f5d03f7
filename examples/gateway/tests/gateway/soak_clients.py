"""MySQL and HTTP clients for the soak (examples/gateway/tests/gateway/soak.rs).

    python3 soak_clients.py MODE MYSQL_PORT HTTP_PORT TOKEN SECONDS [COUNTS...]

Modes (each runs until SECONDS have passed, then prints one JSON line of counts):
  light MY_N HTTP_N  MY_N MySQL sessions and HTTP_N keep-alive HTTP connections, each
                     sending a small masked query or request every 0.5-1.5 s
  blob               10 MB BLOB round trips as prepared-statement parameters (a large
                     packet each way)
  kill               SELECT SLEEP(10) stopped by KILL QUERY from a direct connection to the
                     database (SOAK_DIRECT=host:port:user:password), then the session ended
                     by KILL CONNECTION
  slow               a 20 MB result read at about 64 KB/s for two seconds, then dropped

Every operation has a deadline of 60 s (socket timeouts): one that passes it is "stuck".
"""

import http.client
import json
import random
import socket
import sys
import threading
import time

import os

import pymysql

MODE, MY_PORT, HTTP_PORT, TOKEN, SECS = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
DEADLINE = time.monotonic() + SECS
TIMEOUT = 60

lock = threading.Lock()
counts = {"ok": 0, "expected_errors": 0, "stuck": 0, "errors": {}}


def count(key, detail=None):
    with lock:
        if key == "errors":
            counts["errors"][detail] = counts["errors"].get(detail, 0) + 1
        else:
            counts[key] += 1


def mysql(**kw):
    return pymysql.connect(host="127.0.0.1", port=MY_PORT, user="alice", password=TOKEN,
                           database="app", connect_timeout=TIMEOUT, read_timeout=TIMEOUT,
                           write_timeout=TIMEOUT, **kw)


def direct():
    host, port, user, password = os.environ["SOAK_DIRECT"].split(":", 3)
    return pymysql.connect(host=host, port=int(port), user=user, password=password,
                           connect_timeout=TIMEOUT, read_timeout=TIMEOUT, write_timeout=TIMEOUT)


def guarded(what, fn):
    """Run one operation; a timeout is a stuck operation, anything else unexpected an error."""
    try:
        fn()
        count("ok")
    except (socket.timeout, TimeoutError) as e:
        print(f"soak: STUCK: {what}: {e}", file=sys.stderr, flush=True)
        count("stuck")
    except pymysql.err.OperationalError as e:
        # 2013: lost connection during a timeout counts as stuck too.
        if "timed out" in str(e):
            print(f"soak: STUCK: {what}: {e}", file=sys.stderr, flush=True)
            count("stuck")
        else:
            count("errors", f"{what}: {e.args[0] if e.args else e}")
    except Exception as e:  # noqa: BLE001 - every other failure is reported by kind
        count("errors", f"{what}: {type(e).__name__}: {e}"[:200])


def light_mysql(i):
    conn = None
    while time.monotonic() < DEADLINE:
        def once():
            nonlocal conn
            if conn is None:
                conn = mysql()
            with conn.cursor() as c:
                c.execute("SELECT id, email FROM soak_people WHERE id = %s", (random.randint(1, 1000),))
                row = c.fetchone()
                if row is None or "@example.com" not in row[1] or row[1].startswith("user"):
                    raise AssertionError(f"not masked: {row!r}")
        guarded("mysql query", once)
        time.sleep(random.uniform(0.5, 1.5))
    if conn is not None:
        conn.close()


def light_http(i):
    conn = http.client.HTTPConnection("127.0.0.1", HTTP_PORT, timeout=TIMEOUT)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    while time.monotonic() < DEADLINE:
        def once():
            nonlocal conn
            try:
                conn.request("GET", "/v1/users", headers=headers)
                r = conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionError, http.client.CannotSendRequest):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", HTTP_PORT, timeout=TIMEOUT)
                raise
            body = r.read()
            if r.status != 200:
                raise AssertionError(f"status {r.status}: {body[:200]!r}")
        guarded("http request", once)
        time.sleep(random.uniform(0.5, 1.5))
    conn.close()


def blob():
    """10 MB BLOBs as prepared-statement parameters (mysql-connector, binary protocol): a
    large packet each way. (A client that inlines a BLOB in the statement text, as PyMySQL
    does, sends a statement over the 2 MiB the policy parses: refused with 1436.)"""
    import mysql.connector
    data = bytes(i % 251 for i in range(10 << 20))
    while time.monotonic() < DEADLINE:
        def once():
            conn = mysql.connector.connect(host="127.0.0.1", port=MY_PORT, user="alice", password=TOKEN,
                                           database="app", use_pure=True,
                                           ssl_ca=os.environ["SOAK_CA"], ssl_verify_cert=True,
                                           collation="utf8mb4_general_ci", autocommit=True,
                                           connection_timeout=TIMEOUT)
            try:
                c = conn.cursor(prepared=True)
                c.execute("INSERT INTO soak_blob (b) VALUES (%s)", (data,))
                rid = c.lastrowid
                c.execute("SELECT b FROM soak_blob WHERE id = %s", (rid,))
                got = c.fetchone()[0]
                if len(got) != len(data):
                    raise AssertionError(f"{len(got)} bytes back of {len(data)}")
                c.execute("DELETE FROM soak_blob WHERE id = %s", (rid,))
                c.close()
            finally:
                conn.close()
        guarded("mysql 10 MB blob round trip", once)


def kill():
    while time.monotonic() < DEADLINE:
        def once():
            victim, killer = mysql(), direct()
            try:
                vid = victim.thread_id()
                outcome = {}

                def sleep():
                    try:
                        with victim.cursor() as c:
                            c.execute("SELECT SLEEP(10)")
                            outcome["row"] = c.fetchone()
                    except Exception as e:  # noqa: BLE001
                        outcome["error"] = e
                t = threading.Thread(target=sleep)
                t.start()
                time.sleep(0.3)
                with killer.cursor() as c:
                    c.execute(f"KILL QUERY {vid}")
                t.join(TIMEOUT)
                if t.is_alive():
                    raise TimeoutError("SELECT SLEEP(10) outlived KILL QUERY")
                # MariaDB answers a killed SLEEP with 1 (or error 1317): either way it stopped.
                count("expected_errors")
                with killer.cursor() as c:
                    c.execute(f"KILL CONNECTION {vid}")
                try:
                    with victim.cursor() as c:
                        c.execute("SELECT 1")
                    raise AssertionError("the killed session still answers")
                except pymysql.err.OperationalError:
                    count("expected_errors")
            finally:
                for conn in (victim, killer):
                    try:
                        conn.close()
                    except Exception:  # noqa: BLE001
                        pass
        guarded("mysql kill", once)


def slow():
    while time.monotonic() < DEADLINE:
        def once():
            conn = mysql(cursorclass=pymysql.cursors.SSCursor)
            try:
                with conn.cursor() as c:
                    c.execute("SELECT REPEAT('y', 1000) FROM seq_1_to_20000")
                    until = time.monotonic() + 2
                    while time.monotonic() < until:
                        if c.fetchone() is None:
                            break
                        time.sleep(0.015)
            finally:
                # Dropped mid-result: the gateway must end the session and free it.
                if conn._sock is not None:
                    conn._sock.close()
        guarded("mysql slow reader", once)


if MODE == "light":
    my_n, http_n = int(sys.argv[6]), int(sys.argv[7])
    threads = [threading.Thread(target=light_mysql, args=(i,)) for i in range(my_n)]
    threads += [threading.Thread(target=light_http, args=(i,)) for i in range(http_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
else:
    {"blob": blob, "kill": kill, "slow": slow}[MODE]()
print(json.dumps(counts), flush=True)
