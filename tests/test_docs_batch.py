"""docs/batch.md's example runs as written: a PostgreSQL table scored into another, and its
labels matched by `cpmai monitor`, against a real throwaway server."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from _postgres import pg_db, postgres_url  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- example:begin -->", "<!-- example:end -->"


def _example() -> list[str]:
    text = (ROOT / "docs" / "batch.md").read_text()
    block = text.split(BEGIN, 1)[1].split(END, 1)[0]
    return [line[2:] for line in block.splitlines() if line.startswith("$ ")]


@pytest.mark.slow
def test_the_batch_example_runs_as_written(churn: Path, home: Path, pg_db: str) -> None:  # noqa: F811
    url = pg_db.replace("postgresql+psycopg://", "postgresql://")
    commands = _example()
    assert commands[0].startswith("export DATABASE_URL=")
    env = {**os.environ, "DATABASE_URL": url}
    cpmai = f"{shlex.quote(sys.executable)} -m cpmai"
    outputs = []
    for command in commands[1:]:
        line = re.sub(r"^cpmai ", f"{cpmai} ", command)
        done = subprocess.run(["bash", "-c", line], cwd=churn.parent, env=env,
                              capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        outputs.append(done.stdout + done.stderr)
    scored = re.search(r"scored ([\d,]+) rows", outputs[3])
    assert scored is not None and "(table churn_scores)" in outputs[3], outputs[3]
    rows = int(scored.group(1).replace(",", ""))
    assert rows == sum(1 for _ in (churn.parent / "data" / "holdout.csv").open()) - 1
    assert "(3 rows)" in outputs[4]
    monitor = subprocess.run(
        [sys.executable, "-m", "cpmai", "monitor", "churn-classifier", "--env", "batch",
         "--labels", url, "--labels-query", "SELECT customer_id, churned FROM customers",
         "--labels-key", "customer_id", "--json"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    quality = json.loads(monitor.stdout)["model_quality"]
    assert quality["join"] == "key" and quality["labelled_rows"] == rows
