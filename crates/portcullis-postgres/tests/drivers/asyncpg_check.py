"""asyncpg through the gateway: its named prepared statements, binary values, a
transaction and an error. Connection settings come from the PG* environment."""
import asyncio
import os

import asyncpg


async def main():
    conn = await asyncpg.connect(
        host=os.environ["PGHOST"],
        port=int(os.environ["PGPORT"]),
        user=os.environ["PGUSER"],
        password=os.environ["PGPASSWORD"],
        database=os.environ["PGDATABASE"],
        ssl=False,
    )
    assert await conn.fetchval("select $1::int + 1", 41) == 42
    stmt = await conn.prepare("select $1::int8 * 2, $2::float8, $3::bytea")
    for i in range(10):
        row = await stmt.fetchrow(i, 0.5, b"\x00\xff")
        assert tuple(row) == (i * 2, 0.5, b"\x00\xff")
    await conn.execute("create temp table t (id int)")
    async with conn.transaction():
        await conn.execute("insert into t values (1)")
    try:
        async with conn.transaction():
            await conn.execute("insert into t values (2)")
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    assert await conn.fetchval("select array_agg(id) from t") == [1]
    try:
        await conn.fetchval("select 1/0")
        raise AssertionError("expected an error")
    except asyncpg.exceptions.DivisionByZeroError as e:
        assert e.sqlstate == "22012"
    rows = await conn.fetch("select g from generate_series(1, 5000) g")
    assert len(rows) == 5000
    await conn.close()
    print("ok asyncpg")


asyncio.run(main())
