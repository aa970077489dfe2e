"""Error types and the exit codes they map to.

Every expected failure raises a `CpmaiError` subclass; the CLI's single error boundary turns it
into a message on stderr and the subclass's exit code. Anything else is a bug (exit 1).
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes, the contract CI scripts rely on (see the README)."""

    OK = 0
    INTERNAL = 1
    USAGE = 2
    GATE = 3
    THRESHOLD = 4
    INTEGRITY = 5
    TARGET = 6
    INTERRUPTED = 130


class CpmaiError(Exception):
    """Base of every expected failure. `hint` says what the user can do about it."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(CpmaiError):
    """Bad arguments, an unknown name or version, an unreadable input file."""

    exit_code = ExitCode.USAGE


class ManifestError(UsageError):
    """The manifest is not valid. Holds one entry per problem, each naming file:line and field."""

    def __init__(self, problems: list[str], *, hint: str | None = None) -> None:
        self.problems = problems
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(
            f"invalid manifest ({len(problems)} {noun}):\n" + "\n".join(f"  {p}" for p in problems),
            hint=hint,
        )


class ModelLoadError(UsageError):
    """The model file cannot be read in the format it claims to be."""


class GateError(CpmaiError):
    """A gate refused: a deploy or promotion is blocked."""

    exit_code = ExitCode.GATE


class ThresholdError(CpmaiError):
    """A measured value breached a threshold (SLO, baseline, alert, budget)."""

    exit_code = ExitCode.THRESHOLD


class IntegrityError(CpmaiError):
    """An artifact's bytes or the ledger's chain do not match what was recorded."""

    exit_code = ExitCode.INTEGRITY


class TargetError(CpmaiError):
    """A deployment target failed: not healthy, rollout aborted."""

    exit_code = ExitCode.TARGET


def breach_code(breached: bool) -> ExitCode:
    """The one mapping of a result's verdict to the exit code: a breached threshold (SLO,
    baseline, alert, trigger, budget) is 4, else 0."""
    return ExitCode.THRESHOLD if breached else ExitCode.OK
