"""A real, throwaway PostgreSQL server on 127.0.0.1 for tests (Debian's `postgresql`; `make test`
installs it).

A test module imports the fixtures it uses, and `postgres_url` whenever it uses `pg_db`:

    from _postgres import pg_db, postgres_url  # noqa: F401

(as `_postgres`, as tests/serving_helpers.py is imported, not `tests._postgres`: a second copy
of the module would start a second server).

- `postgres_url` (session; one server per pytest process, so per xdist worker): a SQLAlchemy
  URL, `postgresql+psycopg://cpmai@127.0.0.1:PORT/cpmai`, to a database shared by its tests.
- `pg_db` (per test): a URL to a new, empty database of its own, dropped afterwards.

The server's folder is a fresh temporary one; `initdb` refuses to run as root, so as root the
server runs as the `postgres` system user the Debian package creates. It listens on 127.0.0.1
only (and on a socket in its own folder), trusts every local connection, and is stopped at the
end of the session (`pg_ctl stop -m fast`, then SIGKILL to its postmaster if it is still there).
Without the binaries the tests are skipped, or fail under CPMAI_REQUIRE_TOOLS=1."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

USER = "cpmai"
DATABASE = "cpmai"
SYSTEM_USER = "postgres"
"""Who runs the server when the tests run as root (Debian's package creates this user)."""
REQUIRE_TOOLS = os.environ.get("CPMAI_REQUIRE_TOOLS") == "1"


def find_bin() -> Path | None:
    """The folder holding `initdb`, `pg_ctl` and `postgres`: `pg_ctl`'s on PATH, else the newest
    /usr/lib/postgresql/*/bin."""
    on_path = shutil.which("pg_ctl")
    if on_path is not None:
        folder = Path(on_path).resolve().parent
        if (folder / "initdb").is_file():
            return folder
    versions = [
        path.parent
        for path in Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")
        if re.fullmatch(r"\d+(\.\d+)?", path.parent.parent.name)
        and (path.parent / "initdb").is_file()
    ]
    if not versions:
        return None
    return max(versions, key=lambda folder: [int(n) for n in folder.parent.name.split(".")])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _running(pid: int, data: Path) -> bool:
    """Whether `pid` is still our postmaster (a zombie, left for PID 1 to reap, is not)."""
    proc = Path(f"/proc/{pid}")
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        command = (proc / "cmdline").read_bytes().split(b"\0")
    except (OSError, IndexError):
        return False
    return state != "Z" and os.fsencode(data) in command


@dataclass
class Server:
    bin: Path
    folder: Path
    port: int
    as_root: bool
    pid: int | None = None

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def sockets(self) -> Path:
        return self.folder / "s"

    def url(self, database: str = DATABASE) -> str:
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{database}"

    def run(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        """One of the server's programs, as the `postgres` user when we are root."""
        command = [str(self.bin / args[0]), *args[1:]]
        if self.as_root:
            command = ["runuser", "-u", SYSTEM_USER, "--", *command]
        return subprocess.run(
            command,
            cwd=self.folder,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data / "postmaster.pid").read_text().splitlines()[0])
        return None

    def start(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.sockets} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        # -l: the postmaster must not inherit our pipes, or pg_ctl's output never ends
        started = self.run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.folder / "log"), "-o", options,
            "-w", "-t", "60", "start", timeout=90,
        )  # fmt: skip
        self.pid = self._postmaster_pid()
        if started.returncode != 0:
            log = (self.folder / "log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"pg_ctl start failed: {started.stdout}{started.stderr}\n{log}")

    def stop(self) -> None:
        pid = self.pid or self._postmaster_pid()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop",
                     timeout=45)  # fmt: skip
        if pid is not None:
            deadline = time.monotonic() + 5
            while _running(pid, self.data) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _running(pid, self.data):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def postgres_server(bin: Path) -> Iterator[Server]:
    """A started server with an empty `cpmai` database, stopped and deleted on exit."""
    as_root = os.geteuid() == 0
    # a short path (a Unix socket's path is limited to ~107 bytes), in /tmp, which the
    # `postgres` user can reach (pytest's own temporary folders are root's, mode 0700)
    folder = Path(tempfile.mkdtemp(prefix="cpmai-pg-", dir="/tmp"))
    server: Server | None = None
    try:
        (folder / "data").mkdir()
        (folder / "s").mkdir()
        if as_root:
            for path in (folder, folder / "data", folder / "s"):
                shutil.chown(path, SYSTEM_USER, SYSTEM_USER)
        server = Server(bin=bin, folder=folder, port=0, as_root=as_root)
        init = server.run(
            "initdb", "-D", str(server.data), "-U", USER, "--auth=trust", "--encoding=UTF8",
            "--locale=C", "--no-sync", "--no-instructions", timeout=120,
        )  # fmt: skip
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stdout}{init.stderr}")
        for attempt in range(3):  # another process may take the free port before we do
            server.port = _free_port()
            try:
                server.start()
                break
            except RuntimeError:
                server.stop()
                if attempt == 2:
                    raise
        with _admin(server.url()) as conn:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def _admin(url: str) -> psycopg.Connection[tuple[Any, ...]]:
    """An autocommit connection to the `postgres` database of the server behind a URL."""
    parsed = make_url(url)
    return psycopg.connect(
        host=parsed.host,
        port=parsed.port,
        user=parsed.username,
        dbname="postgres",
        connect_timeout=10,
        autocommit=True,
    )


_STARTED: list[str] = []
"""The URL of this process's server, once started. pytest makes a separate session fixture of
each module that imports one, so the server is kept here to be started once per process (once
per xdist worker), and stopped when pytest ends (config cleanup)."""


@pytest.fixture(scope="session")
def postgres_url(request: pytest.FixtureRequest) -> str:
    """A SQLAlchemy URL to the `cpmai` database of a throwaway server, one per pytest process
    (so one per xdist worker), shared by the tests that use it."""
    if _STARTED:
        return _STARTED[0]
    bin = find_bin()
    if bin is None:
        reason = (
            "needs PostgreSQL's server (initdb, pg_ctl: Debian's postgresql; `make test` "
            "installs it)"
        )
        if REQUIRE_TOOLS:
            pytest.fail(reason)
        pytest.skip(reason)
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.fail("as root, PostgreSQL is started as `postgres` with runuser (util-linux)")
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(postgres_server(bin))
        request.config.add_cleanup(stack.pop_all().close)
    _STARTED.append(server.url())
    return _STARTED[0]


@pytest.fixture
def pg_db(postgres_url: str) -> Iterator[str]:
    """A SQLAlchemy URL to a new, empty database for this test only; dropped afterwards (with
    any connection still open to it)."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    with _admin(postgres_url) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with _admin(postgres_url) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
