"""The documentation follows the CLI: every command and option has help text and a guide, every
flag the docs show exists, and the README's tour runs as written.

`CPMAI_UPDATE_README=1 pytest tests/test_docs.py -k tour` reruns the tour and pastes its real
output into the README."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOUR_BEGIN, TOUR_END = "<!-- tour:begin -->", "<!-- tour:end -->"
INVOCATION = re.compile(r"(?<![\w/.-])cpmai\s+([a-z][a-z-]*)(?:\s+([a-z][a-z-]*))?([^`\n]*)")
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*|-[a-zA-Z])(?![\w-])")


def _click_commands() -> tuple[set[str], dict[str, Any]]:
    """Global options, and every command ("kpi record" for a group's) as a click command."""
    import typer

    from cpmai.cli.main import build_app

    root: Any = typer.main.get_command(build_app())  # a group (typer vendors its own click)
    commands: dict[str, Any] = {}
    for name, command in root.commands.items():
        if hasattr(command, "commands"):
            for sub, subcommand in command.commands.items():
                commands[f"{name} {sub}"] = subcommand
        commands[name] = command
    return _options(root), commands


def _options(command: Any) -> set[str]:
    return {
        opt
        for param in command.params
        for opt in (*param.opts, *param.secondary_opts)
        if opt.startswith("-")
    } | {"-h", "--help"}


def test_every_command_and_option_has_help_and_a_guide() -> None:
    _, commands = _click_commands()
    guides = "\n".join(path.read_text() for path in DOCS[1:])
    for name, command in commands.items():
        assert (command.help or "").strip(), f"`cpmai {name}` has no help text"
        for param in command.params:
            if param.param_type_name == "option" and param.name != "help":
                assert (param.help or "").strip(), f"`cpmai {name}` {param.opts[0]} has no help"
        if " " not in name:
            assert f"cpmai {name}" in guides, f"no guide in docs/ shows `cpmai {name}`"


def test_usage_lines_name_arguments_as_users_type_them(cli: Any) -> None:
    _, commands = _click_commands()
    for name in commands:
        result = cli(*name.split(), "--help")
        usage = next(line for line in result.out.splitlines() if line.startswith("Usage:"))
        assert "{" not in usage and "}" not in usage, usage
        arguments = [p for p in commands[name].params if p.param_type_name == "argument"]
        for argument in arguments:
            assert (argument.metavar or argument.name.upper()) in usage, (name, usage)


def test_every_flag_the_docs_show_exists() -> None:
    """A renamed or removed option must not live on in a guide or the README."""
    global_options, commands = _click_commands()
    wrong = []
    for path in DOCS:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for match in INVOCATION.finditer(line):
                first, second, rest = match.groups()
                if first not in commands:
                    continue  # prose such as "cpmai takes a model"
                name = f"{first} {second}" if f"{first} {second}" in commands else first
                if name == first and f"{first} show" in commands:  # `cpmai alerts NAME`
                    name = f"{first} show"
                if name in (first, f"{first} show") and second:
                    rest = f"{second} {rest}"
                rest = re.split(r" \| | && |; ", rest)[0]
                known = _options(commands[name]) | global_options
                for flag in FLAG.findall(rest):
                    if flag not in known:
                        wrong.append(f"{path.relative_to(ROOT)}:{number}: cpmai {name} {flag}")
    assert not wrong, "the docs show options the CLI does not have:\n" + "\n".join(wrong)


def test_every_relative_link_in_the_docs_resolves() -> None:
    broken = [
        f"{path.relative_to(ROOT)}: {target}"
        for path in [*DOCS, ROOT / "configs" / "README.md"]
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text())
        if not target.startswith(("http://", "https://")) and not (path.parent / target).exists()
    ]
    assert not broken, "links to nothing:\n" + "\n".join(broken)


def _tour(readme: str) -> tuple[str, list[str], str]:
    head, rest = readme.split(TOUR_BEGIN, 1)
    block, tail = rest.split(TOUR_END, 1)
    commands = [line[2:] for line in block.splitlines() if line.startswith("$ ")]
    return head, commands, tail


@pytest.mark.slow
def test_the_readme_tour_runs_as_written(tmp_path: Path) -> None:
    """Every command of the README's 60-second tour, in order, in an empty folder: each must
    exit 0. The example's staging server listens on 127.0.0.1:8081 and is stopped at the end."""
    readme = (ROOT / "README.md").read_text()
    head, commands, tail = _tour(readme)
    assert commands[0].startswith("cpmai init ") and any("cpmai report" in c for c in commands)
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "CPMAI_ACTOR": "you@example.com",
        "NO_COLOR": "1",
    }
    env.pop("CPMAI_HOME", None)
    cwd = tmp_path
    transcript = []
    try:
        for command in commands:
            transcript.append(f"$ {command}")
            if command.startswith("cd "):
                cwd = (cwd / command[3:].strip()).resolve()
                continue
            proc = subprocess.run(
                ["bash", "-c", command],
                cwd=cwd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=300,
                check=False,
            )
            assert proc.returncode == 0, f"`{command}` exited {proc.returncode}:\n{proc.stdout}"
            output = proc.stdout.replace(str(tmp_path) + "/", "")
            transcript.extend(line.rstrip() for line in output.splitlines())
    finally:
        tour_dir = tmp_path / "tour"
        if (tour_dir / ".cpmai").exists():
            subprocess.run(
                [sys.executable, "-m", "cpmai", "stop", "churn-classifier", "--env", "staging"],
                cwd=tour_dir,
                env=env,
                capture_output=True,
                timeout=60,
                check=False,
            )
    if os.environ.get("CPMAI_UPDATE_README"):
        body = "\n".join(line for line in transcript if line)
        block = f"{TOUR_BEGIN}\n```text\n{body}\n```\n{TOUR_END}"
        (ROOT / "README.md").write_text(f"{head}{block}{tail}")


def test_the_library_example_runs(trained_example: Path, tmp_path: Path) -> None:
    """docs/project.md's Python example, as written, in a copy of the trained churn example."""
    text = (ROOT / "docs" / "project.md").read_text()
    code = text.split("## As a library", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    folder = tmp_path / "churn"
    shutil.copytree(trained_example, folder)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    first, second, third = proc.stdout.splitlines()[:3]
    assert first.startswith("churn-classifier 1.0.0 ") and first.endswith(" True")
    assert second.startswith("[") and "[[" in second
    assert third.startswith("1 package 1.0.0 you@example.com")
