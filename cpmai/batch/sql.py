"""Reading rows from a database table or query, and writing scored rows to a table.

Reads go in key order, a chunk a query (`WHERE key > last ORDER BY key LIMIT n`): no
transaction stays open between chunks (SQLite's writer is never blocked by its own reader), and
a resumed run starts after the last key written. Writes go through SQLAlchemy, except
PostgreSQL's, which use COPY through psycopg (the fast path the server offers for bulk loads).
Each chunk is written in one transaction with its run's progress (`cpmai.batch.runs`): after a
crash the output holds whole chunks only, and the progress says which.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cpmai.batch.chunks import PREDICTION, PROBABILITY, REFUSED
from cpmai.batch.locations import SqlLocation
from cpmai.errors import UsageError

if TYPE_CHECKING:
    import pandas as pd
    from sqlalchemy import Connection, Table
    from sqlalchemy.engine import Engine
    from sqlalchemy.sql.elements import ColumnElement

VERSION = "version"
RUN_ID = "run_id"
SCORED_AT = "scored_at"
BOOKKEEPING = (VERSION, RUN_ID, SCORED_AT, REFUSED)
"""Columns every output table has besides the key, the prediction and the probabilities."""


def split_name(name: str) -> tuple[str | None, str]:
    """`schema.table` or `table`."""
    schema, _, table = name.rpartition(".")
    if not table:
        raise UsageError(f"{name!r}: not a table name")
    return schema or None, table


def reflect(engine: Engine, name: str) -> Table | None:
    from sqlalchemy import MetaData, Table
    from sqlalchemy.exc import NoSuchTableError

    schema, table = split_name(name)
    try:
        return Table(table, MetaData(), schema=schema, autoload_with=engine)
    except NoSuchTableError:
        return None


def connect_error(where: SqlLocation, exc: Exception) -> UsageError:
    """A database that cannot be reached or refused a statement, said in one line (a driver
    may echo its connection string: the URL's password is taken out of it)."""
    from sqlalchemy.engine import make_url

    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    url = make_url(where.url)
    secrets = [url.password, *(url.query.get(k) for k in url.query if "pass" in k.lower())]
    for secret in secrets:
        if isinstance(secret, str) and secret:
            line = line.replace(secret, "***")
    return UsageError(f"{where.shown}: {line}")


def as_text(query: str) -> str:
    """A user's query for `sqlalchemy.text`: its colons are the query's own (`':vip'`,
    `'10:30'`, PostgreSQL's `::` casts), not bind parameters."""
    return query.replace(":", "\\:")


def read_query(where: SqlLocation, query: str) -> pd.DataFrame:
    """A whole query's rows (a labels query: small next to what is scored)."""
    import pandas as pd
    from sqlalchemy import text

    where.check_file("monitoring.labels.url", must_exist=True)
    engine = where.engine()
    try:
        with engine.connect() as conn:
            result = conn.execute(text(as_text(query.strip().rstrip(";"))))
            return pd.DataFrame(result.fetchall(), columns=list(result.keys()))
    except Exception as exc:
        raise connect_error(where, exc) from None
    finally:
        engine.dispose()


@dataclass
class Chunk:
    frame: pd.DataFrame
    first_row: int
    """0-based number of its first row in the whole input (this run's reading order)."""
    last_key: list[Any] | None


class SqlSource:
    """A table (`--table`) or a query (`--query`), read in chunks in key order."""

    def __init__(
        self, where: SqlLocation, *, table: str | None, query: str | None, key: list[str]
    ) -> None:
        if (table is None) == (query is None):
            raise UsageError(f"--input {where.shown}: give --table T or --query 'SELECT …'")
        where.check_file("--input", must_exist=True)
        self.where = where
        self.engine = where.engine()
        self.table_name = table
        self.query = query.strip().rstrip(";").strip() if query else None
        if self.query == "":
            raise UsageError("--query: empty")
        self.table: Table | None = None
        self.unique = False
        """Whether the key is the table's primary key (unique and never NULL by itself)."""
        if table is not None:
            try:
                self.table = reflect(self.engine, table)
            except Exception as exc:  # the driver's own errors: unreachable, refused, …
                raise connect_error(where, exc) from None
            if self.table is None:
                raise UsageError(f"--input {where.shown}: no table {table!r}")
            primary = [c.name for c in self.table.primary_key.columns]
            key = key or primary
            self.unique = key == primary
            if not key:
                raise UsageError(
                    f"--table {table}: the table has no primary key; name the column(s) that "
                    "identify a row with --key (the output must say which row each prediction "
                    "is for, and a resumed run where to go on)"
                )
            unknown = [k for k in key if k not in self.table.columns]
            if unknown:
                raise UsageError(f"--key: table {table!r} has no column {', '.join(unknown)}")
        elif not key:
            raise UsageError(
                "--query: name the column(s) that identify a row with --key (the output must "
                "say which row each prediction is for, and a resumed run where to go on)"
            )
        self.key = key
        if self.table is None:
            self.unique = False

    @property
    def shown(self) -> str:
        what = f"table {self.table_name}" if self.table_name else f"query {self.query}"
        return f"{self.where.shown} ({what})"

    def selectable(self) -> tuple[Any, list[ColumnElement[Any]]]:
        from sqlalchemy import literal_column, text

        if self.table is not None:
            return self.table, [self.table.c[k] for k in self.key]
        quote = self.engine.dialect.identifier_preparer.quote
        source = text(f"({as_text(str(self.query))}\n) AS cpmai_source")
        return source, [literal_column(f"cpmai_source.{quote(k)}") for k in self.key]

    def check_key(self) -> None:
        """A key that is not the primary key, checked whole by the database before paging: a
        NULL is never `> last` and a repeat across two chunks is skipped, and only the
        database's own equality sees two values its collation makes equal ('k1', 'K1')."""
        from sqlalchemy import func, or_, select

        if self.unique:
            return
        source, keys = self.selectable()
        shown = ",".join(self.key)
        nulls = select(*keys).select_from(source).where(or_(*(k.is_(None) for k in keys)))
        repeats = select(*keys).select_from(source).group_by(*keys)
        repeats = repeats.having(func.count() > 1)
        try:
            with self.engine.connect() as conn:
                if conn.execute(nulls.limit(1)).first() is not None:
                    raise UsageError(
                        f"--key {shown}: some rows have no key (NULL); every row needs one"
                    )
                twice = conn.execute(repeats.limit(1)).first()
        except UsageError:
            raise
        except Exception as exc:
            raise connect_error(self.where, exc) from None
        if twice is not None:
            raise UsageError(
                f"--key {shown}: {list(twice)} appears more than once; the key must be unique"
            )

    def chunks(self, chunk_rows: int, after: list[Any] | None, first_row: int) -> Iterator[Chunk]:
        import pandas as pd
        from sqlalchemy import literal_column, select, tuple_

        self.check_key()
        source, keys = self.selectable()
        statement = (
            select(literal_column("*")).select_from(source)
            if self.table is None
            else select(self.table)
        )
        statement = statement.order_by(*keys).limit(chunk_rows)
        last = after
        if last is not None:  # from JSON: dates, decimals, uuids are text until typed again
            if len(last) != len(keys):
                raise UsageError(
                    f"the run's last key {last} does not fit --key {','.join(self.key)}: start "
                    "a new run with --new-run"
                )
            try:
                with self.engine.connect() as conn:
                    sample = conn.execute(select(*keys).select_from(source).limit(1)).first()
            except Exception as exc:
                raise connect_error(self.where, exc) from None
            if sample is not None:
                last = [_typed_like(v, like) for v, like in zip(last, sample, strict=True)]
        while True:
            query = statement
            if last is not None:
                query = query.where(
                    keys[0] > last[0] if len(keys) == 1 else tuple_(*keys) > tuple_(*last)
                )
            try:
                with self.engine.connect() as conn:
                    result = conn.execute(query)
                    # plain tuples: pandas probes a Row's attributes, which costs more than this
                    rows = list(map(tuple, result.fetchall()))
                    frame = pd.DataFrame.from_records(rows, columns=list(result.keys()))
            except Exception as exc:
                raise connect_error(self.where, exc) from None
            if frame.empty:
                return
            missing = [k for k in self.key if k not in frame.columns]
            if missing:
                raise UsageError(f"--key: the query gives no column {', '.join(missing)}")
            if frame.columns.duplicated().any():
                twice = sorted(set(frame.columns[frame.columns.duplicated()]))
                raise UsageError(
                    f"the input has more than one column named {', '.join(map(str, twice))}; "
                    "give each its own name (AS …)"
                )
            check_key_values(frame, self.key, first_row)
            _pageable(frame, self.key, self.where.dialect)
            last = [native_key(frame[k].iloc[-1]) for k in self.key]
            yield Chunk(frame, first_row, last)
            first_row += len(frame)
            if len(frame) < chunk_rows:
                return


def check_key_values(frame: pd.DataFrame, key: list[str], first_row: int) -> None:
    nulls = frame[key].isna().any(axis=1)
    if nulls.any():
        row = int(nulls.to_numpy().argmax())
        raise UsageError(
            f"--key {','.join(key)}: row {first_row + row + 1} has no key (NULL); every row "
            "needs one"
        )
    repeated = frame.duplicated(subset=key)
    if repeated.any():
        row = int(repeated.to_numpy().argmax())
        value = frame[key].iloc[row].tolist()
        raise UsageError(
            f"--key {','.join(key)}: {value} appears more than once; the key must be unique"
        )


def _pageable(frame: pd.DataFrame, key: list[str], dialect: str) -> None:
    """A key the next chunk can be bound from exactly. A float read back and bound again may
    not equal itself (PostgreSQL's `real` is read as a double: `k > 0.3` holds for the row
    that was 0.3); SQLite keeps a date as text in whatever format its writer chose, so a date
    bound from Python compares as text against it."""
    for name in key:
        column = frame[name]
        kind = column.dtype.kind
        if kind in "iu":
            continue
        if kind == "f":
            raise UsageError(
                f"--key {name}: a floating-point key cannot page a table exactly (a value read "
                "and bound again may not equal itself); name an integer or text key"
            )
        if dialect != "sqlite":
            continue
        text = kind == "O" or str(column.dtype) in ("str", "string")
        if text and all(isinstance(v, str) for v in column.tolist()):
            continue
        raise UsageError(
            f"--key {name}: a {column.dtype} key cannot page a SQLite table exactly (SQLite "
            "compares dates and other values it keeps as text by their text); name an integer "
            "or text key"
        )


def _typed_like(value: Any, like: Any) -> Any:
    """A key value read back from JSON, as the type the database gives that key."""
    import datetime as dt
    import decimal
    import uuid

    if not isinstance(value, str) or isinstance(like, str):
        return value
    try:
        if isinstance(like, dt.datetime):
            return dt.datetime.fromisoformat(value)
        if isinstance(like, dt.date):
            return dt.date.fromisoformat(value)
        if isinstance(like, dt.time):
            return dt.time.fromisoformat(value)
        if isinstance(like, decimal.Decimal):
            return decimal.Decimal(value)
        if isinstance(like, uuid.UUID):
            return uuid.UUID(value)
    except (ValueError, decimal.InvalidOperation):
        raise UsageError(
            f"the run's last key {value!r} is not a {type(like).__name__}: start a new run "
            "with --new-run"
        ) from None
    return value


def native_key(value: Any) -> Any:
    """A key value as the driver binds it for the next chunk: a plain Python scalar."""
    if hasattr(value, "to_pydatetime"):
        return value.to_pydatetime()
    if hasattr(value, "item"):
        return value.item()
    return value


def _plain(value: Any) -> Any:
    """A key value JSON can hold and a driver can bind."""
    if hasattr(value, "item"):
        value = value.item()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def key_json(values: list[Any] | None) -> str | None:
    return None if values is None else json.dumps([_plain(v) for v in values], default=str)


class SqlSink:
    """The output table: created when absent (key columns, prediction, probabilities, version,
    run id, scored-at time, refusal reason), checked when present."""

    def __init__(self, where: SqlLocation, table: str) -> None:
        where.check_file("--output", must_exist=False)
        self.where = where
        self.engine = where.engine()
        self.name = table
        self.schema, self.table_name = split_name(table)
        self.table: Table | None = None

    @property
    def shown(self) -> str:
        return f"{self.where.shown} (table {self.name})"

    def prepare(self, key_types: dict[str, Any], outputs: dict[str, Any]) -> Table:
        """Create the table if absent, or check it has every column this run writes."""
        from sqlalchemy import Column, DateTime, MetaData, Table, Text

        try:
            existing = reflect(self.engine, self.name)
        except Exception as exc:
            raise connect_error(self.where, exc) from None
        wanted = [*key_types, *outputs, *BOOKKEEPING]
        if existing is not None:
            missing = [c for c in wanted if c not in existing.columns]
            if missing:
                raise UsageError(
                    f"--output-table {self.name}: the table exists without column(s) "
                    f"{', '.join(missing)} (it needs {', '.join(wanted)}); name a new table"
                )
            self.table = existing
            return existing
        columns = [Column(name, kind) for name, kind in {**key_types, **outputs}.items()]
        columns += [
            Column(VERSION, Text, nullable=False),
            Column(RUN_ID, Text, nullable=False),
            Column(SCORED_AT, DateTime(timezone=True), nullable=False),
            Column(REFUSED, Text),
        ]
        table = Table(self.table_name, MetaData(), *columns, schema=self.schema)
        try:
            with self.engine.begin() as conn:
                table.create(conn, checkfirst=True)
        except Exception as exc:
            raise connect_error(self.where, exc) from None
        self.table = table
        return table

    def count_run(self, run_id: str) -> int:
        """Rows the table holds under `run_id` (0 when the table does not exist yet)."""
        from sqlalchemy import func, select

        try:
            table = reflect(self.engine, self.name)
            if table is None or RUN_ID not in table.columns:
                return 0
            with self.engine.connect() as conn:
                query = select(func.count()).select_from(table).where(table.c[RUN_ID] == run_id)
                return int(conn.execute(query).scalar_one())
        except Exception as exc:
            raise connect_error(self.where, exc) from None

    def write(self, conn: Connection, rows: dict[str, list[Any]]) -> None:
        """Append `rows` (column → values, all the same length) inside the caller's
        transaction."""
        from sqlalchemy import bindparam

        assert self.table is not None
        names = list(rows)
        count = len(rows[names[0]]) if names else 0
        if not count:
            return
        if self.where.dialect == "postgresql":
            self._copy(conn, names, rows)
            return
        # the driver's own executemany: SQLAlchemy's per-row parameter handling costs more
        # than the insert; each column's bind processor (SQLite's dates as text) still applies
        dialect = self.engine.dialect
        columns = [self.table.c[n] for n in names]
        values = []
        for column, given in zip(columns, rows.values(), strict=True):
            process = column.type.dialect_impl(dialect).bind_processor(dialect)
            if process is None:
                values.append(given)
            elif all(v is given[0] for v in given):  # a run's constant: version, time
                values.append([process(given[0])] * len(given))
            else:
                values.append([process(v) for v in given])
        insert = self.table.insert().values({c.name: bindparam(c.name) for c in columns})
        compiled = insert.compile(dialect=dialect)
        order = compiled.positiontup or names
        by_name = dict(zip(names, values, strict=True))
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.executemany(str(compiled), list(zip(*(by_name[n] for n in order), strict=True)))
        finally:
            cursor.close()

    def _copy(self, conn: Connection, names: list[str], rows: dict[str, list[Any]]) -> None:
        from psycopg import sql

        raw: Any = conn.connection.dbapi_connection
        target = (
            sql.Identifier(self.schema, self.table_name)
            if self.schema
            else sql.Identifier(self.table_name)
        )
        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
            target, sql.SQL(", ").join(sql.Identifier(n) for n in names)
        )
        with raw.cursor() as cursor, cursor.copy(statement) as copy:
            for values in zip(*rows.values(), strict=True):
                copy.write_row(values)


def column_type(values: pd.Series) -> Any:
    """The SQL type for a column of this dtype (keys passed through, predictions)."""
    from sqlalchemy import BigInteger, Boolean, DateTime, Float, Text

    kind = values.dtype.kind
    if kind in "iu":
        return BigInteger
    if kind == "f":
        return Float
    if kind == "b":
        return Boolean
    if kind == "M":
        return DateTime(timezone=getattr(values.dtype, "tz", None) is not None)
    return Text


def prediction_type(classes: list[Any] | None, task: str) -> Any:
    from sqlalchemy import BigInteger, Boolean, Float, Text

    if task == "regression" or not classes:
        return Float if task == "regression" else Text
    if all(isinstance(c, bool) for c in classes):
        return Boolean
    if all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
        return BigInteger
    if all(isinstance(c, int | float) for c in classes):
        return Float
    return Text


def output_types(names: list[str], classes: list[Any] | None, task: str) -> dict[str, Any]:
    from sqlalchemy import Float

    return {
        name: prediction_type(classes, task) if name == PREDICTION else Float
        for name in names
        if name == PREDICTION or name.startswith(PROBABILITY)
    }
