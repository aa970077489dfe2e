"""Redraw docs/report-html.png and docs/report-terminal.png from the example's state after
`make demo` (examples/churn/.cpmai). Needs the dev extras (playwright) and Debian's chromium.

    .venv/bin/python docs/screenshots.py
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

from rich.console import Console

from cpmai.report.data import build
from cpmai.report.html import render as html
from cpmai.report.terminal import render as terminal

ROOT = Path(__file__).resolve().parent.parent
HOME = Path(os.environ.get("CPMAI_HOME", ROOT / "examples" / "churn" / ".cpmai"))


def main() -> None:
    from playwright.sync_api import sync_playwright

    doc = build(HOME, "churn-classifier")
    console = Console(record=True, width=120, file=io.StringIO())
    console.print(terminal(doc))
    with tempfile.TemporaryDirectory() as folder:
        pages = {
            "report-html.png": (Path(folder) / "report.html", html(doc), 1400),
            "report-terminal.png": (
                Path(folder) / "terminal.html",
                console.export_html(inline_styles=True),
                1100,
            ),
        }
        with sync_playwright() as driver:
            browser = driver.chromium.launch(
                executable_path="/usr/bin/chromium", args=["--no-sandbox"]
            )
            for name, (path, text, width) in pages.items():
                path.write_text(text)
                page = browser.new_page(viewport={"width": width, "height": 800})
                page.goto(path.as_uri())
                page.screenshot(path=str(ROOT / "docs" / name), full_page=True)
                print(f"wrote docs/{name}")
            browser.close()


if __name__ == "__main__":
    main()
