"""Where state lives and who is acting: resolved once per command from flags and environment."""

from __future__ import annotations

import getpass
import os
import subprocess
from pathlib import Path

HOME_ENV = "CPMAI_HOME"
ACTOR_ENV = "CPMAI_ACTOR"


def resolve_home(explicit: str | Path | None = None) -> Path:
    """`--home`, else `$CPMAI_HOME`, else `.cpmai` in the current folder."""
    if explicit:
        return Path(explicit).expanduser().resolve()
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser().resolve()
    return (Path.cwd() / ".cpmai").resolve()


def resolve_actor(explicit: str | None = None) -> str:
    """`--actor`, else `$CPMAI_ACTOR`, else git's user.email, else the OS user."""
    if explicit and explicit.strip():
        return explicit.strip()
    if os.environ.get(ACTOR_ENV, "").strip():
        return os.environ[ACTOR_ENV].strip()
    try:
        email = subprocess.run(
            ["git", "config", "user.email"], capture_output=True, text=True, timeout=5, check=False
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        email = ""
    if email:
        return email
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return f"uid:{os.getuid()}"
