"""psycopg 3 through the gateway: parameters, server-side prepared statements, a
transaction, an error and COPY. Connection settings come from the PG* environment."""
import psycopg

with psycopg.connect(sslmode="disable") as conn:
    cur = conn.cursor()
    cur.execute("select %s::int + 1, %s::text", (41, "héllo"))
    assert cur.fetchone() == (42, "héllo")
    for i in range(10):
        cur.execute("select %s::int * 2", (i,), prepare=True)
        assert cur.fetchone() == (i * 2,)
    cur.execute("create temp table t (id int primary key)")
    conn.commit()
    with conn.transaction():
        cur.execute("insert into t values (1)")
    try:
        with conn.transaction():
            cur.execute("insert into t values (2)")
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    cur.execute("select array_agg(id) from t")
    assert cur.fetchone() == ([1],)
    try:
        cur.execute("select 1/0")
        raise AssertionError("expected an error")
    except psycopg.errors.DivisionByZero as e:
        assert e.sqlstate == "22012"
    conn.rollback()
    with cur.copy("copy t from stdin") as copy:
        for i in range(10, 20):
            copy.write_row((i,))
    cur.execute("select count(*) from t")
    assert cur.fetchone() == (11,)
print("ok psycopg")
