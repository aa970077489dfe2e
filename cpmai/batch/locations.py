"""Where batch rows come from and go to: a file path, or a database URL (SQLAlchemy's form).

`sqlite:///scores.db` (embedded, nothing to install) and `postgresql://user@host/db` (psycopg;
`postgres://` and `postgresql+psycopg://` are the same). `env:NAME` reads the URL from the
environment variable NAME, so a password never has to be on the command line. A URL without a
password lets the driver find one: PostgreSQL's `PGPASSWORD` or `~/.pgpass` (`PGPASSFILE`).
What is shown, logged or recorded is the URL with its password hidden.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cpmai.errors import UsageError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_POSTGRES = ("postgresql", "postgres", "postgresql+psycopg")
SUPPORTED = "sqlite:///FILE or postgresql://USER@HOST[:PORT]/DB"
_SECRET_ARGUMENTS = frozenset({"password", "sslpassword", "passfile", "sslkey"})
"""libpq arguments of a URL's query string that are, or lead to, a secret: hidden when shown."""


@dataclass(frozen=True)
class FileLocation:
    path: Path

    @property
    def shown(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class SqlLocation:
    url: str = field(repr=False)
    """The URL as given (it may hold a password: never show or record it; use `shown`)."""
    shown: str
    """The URL with its password hidden."""
    dialect: str
    """`sqlite` or `postgresql`."""

    def engine(self) -> Engine:
        import warnings

        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # an argument the driver ignores is a mistake
                return create_engine(self.url, poolclass=NullPool)
        except Exception as exc:  # ?timeout=abc, an unknown driver argument
            raise UsageError(f"{self.shown}: {str(exc).splitlines()[0]}") from None

    def check_file(self, option: str, *, must_exist: bool) -> None:
        """A SQLite database file must be a regular file (a FIFO would block, a folder is no
        database), and exist when it is read."""
        from cpmai.fsutil import not_regular

        path = self.sqlite_file()
        if path is None:
            return
        why = not_regular(path)
        if why is not None:
            raise UsageError(f"{option} {self.shown}: {path} {why}")
        if must_exist and not path.is_file():
            raise UsageError(f"{option} {self.shown}: no such database file")
        if not must_exist and not path.parent.is_dir():
            raise UsageError(f"{option} {self.shown}: the folder {path.parent} does not exist")

    def sqlite_file(self) -> Path | None:
        """The database file of a sqlite URL (None for a memory database or another dialect)."""
        if self.dialect != "sqlite":
            return None
        from sqlalchemy.engine import make_url

        database = make_url(self.url).database
        return Path(database) if database and database != ":memory:" else None


def is_url(text: str) -> bool:
    return bool(_URL.match(text)) or text.startswith("env:")


def location(text: str, *, option: str) -> FileLocation | SqlLocation:
    """A path, or a database URL checked for a dialect cpmai writes to."""
    if not is_url(text):
        return FileLocation(Path(text))
    if text.startswith("env:"):
        variable = text[4:]
        value = os.environ.get(variable)
        if not variable or not value:
            raise UsageError(f"{option} {text}: the environment variable {variable!r} is not set")
        if not _URL.match(value):
            raise UsageError(f"{option} {text}: ${variable} is not a database URL ({SUPPORTED})")
        text = value
    return _sql(text, option)


def _sql(text: str, option: str) -> SqlLocation:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(text)
        url.port  # noqa: B018 - a port that is no number is found here, not at connect time
    except (ArgumentError, ValueError):
        raise UsageError(f"{option}: not a database URL ({SUPPORTED})") from None
    secret = {k: "***" for k in url.query if k.lower() in _SECRET_ARGUMENTS}
    shown = url.update_query_dict(secret).render_as_string(hide_password=True)
    shown = shown.replace("%2A%2A%2A", "***")
    if url.drivername in _POSTGRES:
        url = url.set(drivername="postgresql+psycopg")
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise UsageError(
                f"{option}: postgresql:// needs psycopg (pip install 'cpmai[postgres]')"
            ) from None
    elif url.drivername not in ("sqlite", "sqlite+pysqlite"):
        raise UsageError(
            f"{option} {url.drivername}://…: cpmai reads and writes {SUPPORTED} "
            "(other databases: export to Parquet or CSV)"
        )
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        raise UsageError(
            f"{option} {shown}: an in-memory database ends with the run; name a file "
            "(sqlite:///scores.db)"
        )
    return SqlLocation(
        url=url.render_as_string(hide_password=False),
        shown=shown,
        dialect=url.get_backend_name(),
    )
