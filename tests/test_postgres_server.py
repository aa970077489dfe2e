"""The throwaway PostgreSQL server (tests/_postgres.py) is real: SQLAlchemy writes and reads a
table, and each test's database is its own."""

from __future__ import annotations

import sqlalchemy as sa
from _postgres import pg_db, postgres_url  # noqa: F401


def test_the_server_stores_and_returns_rows(postgres_url: str) -> None:  # noqa: F811
    assert postgres_url.startswith("postgresql+psycopg://cpmai@127.0.0.1:")
    assert postgres_url.endswith("/cpmai")
    engine = sa.create_engine(postgres_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text("CREATE TABLE IF NOT EXISTS runs (id serial PRIMARY KEY, name text)")
            )
            conn.execute(sa.text("INSERT INTO runs (name) VALUES (:a), (:b)"), {"a": "é", "b": "z"})
        with engine.connect() as conn:
            names = conn.execute(sa.text("SELECT name FROM runs ORDER BY id")).scalars().all()
            server = conn.execute(sa.text("SELECT inet_server_addr()::text")).scalar_one()
    finally:
        engine.dispose()
    assert names[-2:] == ["é", "z"]
    assert server.startswith("127.0.0.1")


def test_each_test_database_is_new_and_separate(pg_db: str, postgres_url: str) -> None:  # noqa: F811
    assert pg_db != postgres_url
    mine, shared = sa.create_engine(pg_db), sa.create_engine(postgres_url)
    try:
        with mine.connect() as conn:
            tables = conn.execute(
                sa.text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            )
            assert tables.all() == []
        with mine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE only_here (x int)"))
        with shared.connect() as conn:
            found = conn.execute(sa.text("SELECT to_regclass('only_here')")).scalar_one()
        assert found is None
    finally:
        mine.dispose()
        shared.dispose()
