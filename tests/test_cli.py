"""The command line as users and CI scripts meet it: exit codes, stdout/stderr, JSON, colour."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import run_cpmai

ANSI = "\x1b["


def test_help_lists_commands_and_exit_codes() -> None:
    result = run_cpmai("--help")
    assert result.code == 0
    for command in ("init", "validate", "schema", "package", "versions", "history", "ledger"):
        assert f"  {command} " in result.out
    assert (
        "  5    integrity failure (artifact digest mismatch, ledger chain broken, unreadable log)"
        in result.out
    )
    assert run_cpmai("-h").out == result.out
    assert run_cpmai("--version").out.startswith("cpmai ")


def test_unknown_command_and_option_are_usage_errors(cli: Any) -> None:
    result = cli("frobnicate")
    assert result.code == 2 and "No such command" in result.err
    result = cli("versions", "--bogus")
    assert result.code == 2 and "--bogus" in result.err


def test_init_then_validate(tmp_path: Path, cli: Any) -> None:
    target = tmp_path / "My Project"
    result = cli("init", target)
    assert result.code == 0, result.err
    text = (target / "cpmai.yaml").read_text()
    assert "name: my-project" in text and "# " in text
    from cpmai.manifest_file import load_manifest

    assert load_manifest(target / "cpmai.yaml", check_files=False).name == "my-project"
    result = cli("validate", target / "cpmai.yaml")
    assert result.code == 2
    assert "model.path: file not found: model.joblib" in result.err
    result = cli("init", target)
    assert result.code == 2 and "already exists" in result.err
    assert cli("init", target, "--force").code == 0


def test_init_example_copies_the_churn_example(tmp_path: Path, cli: Any) -> None:
    source = Path(__file__).resolve().parent.parent / "examples" / "churn"
    result = cli("init", tmp_path / "tour", "--example", "churn", "--json")
    assert result.code == 0, result.err
    files = [Path(f).name for f in json.loads(result.out)["files"]]
    assert files == ["cpmai.yaml", "train.py", "traffic.py", "ask.py"]
    for name in files:
        assert (tmp_path / "tour" / name).read_text() == (source / name).read_text()
    result = cli("init", tmp_path / "tour", "--example", "churn")
    assert result.code == 2 and "already there" in result.err and "--force" in result.err
    result = cli("init", tmp_path / "tour", "--example", "churn", "--force", "--name", "churn-2")
    assert result.code == 0, result.err
    assert "\nname: churn-2\n" in (tmp_path / "tour" / "cpmai.yaml").read_text()
    result = cli("init", tmp_path / "other", "--example", "fraud")
    assert result.code == 2 and "no example named 'fraud'" in result.err and "churn" in result.err
    assert not (tmp_path / "other").exists()


@pytest.mark.slow
def test_the_wheel_carries_the_examples(tmp_path: Path) -> None:
    """`cpmai init --example` installed from a wheel (no checkout beside it) still finds them."""
    import zipfile

    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(root)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("cpmai-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("cpmai.yaml", "train.py", "traffic.py", "ask.py"):
        assert f"cpmai/examples/churn/{name}" in names


def test_validate_json_reports_problems_on_stdout(tmp_path: Path, cli: Any) -> None:
    path = tmp_path / "cpmai.yaml"
    path.write_text("name: Bad Name\nmodel: {path: m.joblib, task: classification}\n")
    result = cli("validate", path, "--json")
    assert result.code == 2
    doc = json.loads(result.out)
    assert doc["valid"] is False
    assert doc["problems"][0].startswith(f"{path}:1 name:")
    assert f"{path}:1 name:" in result.err


def test_schema_command_prints_json_schema(cli: Any) -> None:
    result = cli("schema")
    assert result.code == 0
    schema = json.loads(result.out)
    assert schema["title"] == "cpmai manifest"
    assert json.loads(cli("validate", "--schema", "x.yaml").out) == schema


def test_package_versions_history_verify(churn: Path, home: Path) -> None:
    result = run_cpmai("package", churn, "--json")
    assert result.code == 0, result.err
    packaged = json.loads(result.out)  # stdout holds exactly one JSON document
    assert packaged["version"] == "1.0.0" and packaged["created"] is True

    result = run_cpmai("package", churn)
    assert result.code == 0
    assert "unchanged: churn-classifier 1.0.0" in result.out
    assert ANSI not in result.out + result.err, "no colour when not on a terminal"

    versions = json.loads(run_cpmai("versions", "churn-classifier", "--json").out)
    assert [v["version"] for v in versions["versions"]] == ["1.0.0"]
    assert versions["versions"][0]["digest"] == packaged["digest"]
    assert versions["versions"][0]["actor"] == "tester@example.com"
    listing = json.loads(run_cpmai("--json", "versions").out)  # global --json works too
    assert listing == {"models": [{"name": "churn-classifier", "versions": 1, "latest": "1.0.0"}]}

    result = run_cpmai("history", "churn-classifier")
    assert result.code == 0
    assert "package" in result.out and "tester@example.com" in result.out

    result = run_cpmai("ledger", "verify", "--json")
    assert result.code == 0
    assert json.loads(result.out) == {"ok": True, "events": 1, "artifacts": 1, "problems": []}


def test_verify_exits_5_naming_the_file(churn: Path, home: Path) -> None:
    assert run_cpmai("package", churn).code == 0
    model = home / "artifacts" / "churn-classifier" / "1.0.0" / "model" / "model.joblib"
    os.chmod(model, 0o644)
    with model.open("r+b") as handle:
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 1]))
    result = run_cpmai("ledger", "verify")
    assert result.code == 5
    assert "model/model.joblib: content changed" in result.err
    assert "Traceback" not in result.err
    result = run_cpmai("ledger", "verify", "--json")
    assert result.code == 5
    assert json.loads(result.out)["ok"] is False


def test_errors_in_json_mode_still_give_one_json_document(home: Path, cli: Any) -> None:
    result = cli("versions", "nope", "--json")
    assert result.code == 2
    assert json.loads(result.out)["error"]["exit_code"] == 2
    assert "no model named 'nope'" in result.err


def test_home_flag_overrides_environment(churn: Path, home: Path, tmp_path: Path) -> None:
    other = tmp_path / "other-home"
    assert run_cpmai("--home", other, "package", churn).code == 0
    assert (other / "ledger.jsonl").exists()
    assert not home.exists()


def test_actor_resolution_order(churn: Path, tmp_path: Path) -> None:
    gitconfig = tmp_path / "gitconfig"
    gitconfig.write_text("[user]\n\temail = git-user@example.com\n")
    base = {k: v for k, v in os.environ.items() if k != "CPMAI_ACTOR"}
    base.update(
        GIT_CONFIG_GLOBAL=str(gitconfig), GIT_CONFIG_NOSYSTEM="1", CPMAI_HOME=str(tmp_path / "h")
    )

    def actor_of(env: dict[str, str], *flags: str) -> str:
        subprocess.run(
            [sys.executable, "-m", "cpmai", *flags, "package", str(churn)],
            env=env,
            cwd=tmp_path,
            check=True,
            capture_output=True,
        )
        events = (tmp_path / "h" / "ledger.jsonl").read_text().splitlines()
        (tmp_path / "h" / "ledger.jsonl").unlink()
        (tmp_path / "h" / "ledger.head").unlink()
        import shutil

        shutil.rmtree(tmp_path / "h" / "artifacts")
        return str(json.loads(events[-1])["actor"])

    assert actor_of(base, "--actor", "flag@example.com") == "flag@example.com"
    assert actor_of({**base, "CPMAI_ACTOR": "env@example.com"}) == "env@example.com"
    assert actor_of(base) == "git-user@example.com"
    no_git = {
        **base,
        "GIT_CONFIG_GLOBAL": str(tmp_path / "none"),
        "USER": "os-user",
        "LOGNAME": "os-user",
    }
    assert actor_of(no_git) == "os-user"


def test_internal_errors_exit_1_without_traceback(
    home: Path, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cpmai.ledger import Ledger

    def broken(self: Any) -> Any:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(Ledger, "trusted", broken)
    result = cli("versions")
    assert result.code == 1
    assert "internal error: RuntimeError: simulated bug" in result.err
    assert "--debug" in result.err and "Traceback" not in result.err
    result = cli("--debug", "versions")
    assert result.code == 1 and "Traceback" in result.err


def test_interrupt_exits_130(home: Path, cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from cpmai.ledger import Ledger

    def interrupted(self: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(Ledger, "trusted", interrupted)
    assert cli("versions").code == 130


def _run_in_pty(args: list[str], env: dict[str, str]) -> str:
    """Run cpmai attached to a pseudo-terminal; return what it wrote there."""
    controller, worker = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cpmai", *args],
        stdin=worker,
        stdout=worker,
        stderr=worker,
        env=env,
        close_fds=True,
    )
    os.close(worker)
    chunks = []
    while True:
        try:
            data = os.read(controller, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=30)
    os.close(controller)
    return b"".join(chunks).decode("utf-8", "replace")


def test_colour_only_on_a_terminal_and_never_with_no_color(home: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    env["TERM"] = "xterm-256color"
    assert ANSI in _run_in_pty(["versions", "nope"], env)
    assert ANSI not in _run_in_pty(["versions", "nope"], {**env, "NO_COLOR": "1"})
    assert ANSI not in _run_in_pty(["--no-color", "versions", "nope"], env)


@pytest.mark.parametrize("argv", [["--help"], ["versions"], ["history", "m"], ["ledger", "verify"]])
def test_fast_paths_import_no_heavy_libraries(home: Path, argv: list[str]) -> None:
    """`cpmai --help` and the ledger readers must not import scikit-learn, pandas, numpy or
    onnxruntime (they would cost hundreds of ms of start-up)."""
    from cpmai.ledger import Ledger

    Ledger(home).append("note", actor="a", name="m")
    code = (
        "import sys\nfrom cpmai.cli.main import main\nmain(sys.argv[1:])\n"
        "heavy = ('sklearn', 'pandas', 'numpy', 'onnxruntime', 'scipy', 'joblib', 'skops')\n"
        "print('HEAVY=' + ','.join(m for m in heavy if m in sys.modules), file=sys.stderr)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60, check=False
    )
    assert "HEAVY=\n" in proc.stderr + "\n", proc.stderr


def test_readme_documents_every_command_and_exit_code() -> None:
    """The README's command table and exit codes follow `cpmai --help`."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    help_text = run_cpmai("--help").out
    section = help_text.split("Commands:")[1].splitlines()
    listed = [line.split()[0] for line in section if line.startswith("  ") and line[2] != " "]
    assert {"init", "validate", "package", "versions", "history", "ledger"} <= set(listed)
    for command in listed:
        assert f"`cpmai {command}" in readme, f"README does not document `cpmai {command}`"
    for code in (0, 1, 2, 3, 4, 5, 6, 130):
        assert f"| {code} |" in readme
        assert f"  {code} " in help_text
    for sub in ("verify", "repair"):
        assert f"`cpmai ledger {sub}`" in readme
        assert sub in run_cpmai("ledger", "--help").out


def test_an_unusable_home_is_a_clear_error_not_a_bug(churn: Path, tmp_path: Path) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    result = run_cpmai("--home", not_a_folder, "package", churn)
    assert result.code == 2, result.err
    assert "Traceback" not in result.err and "internal error" not in result.err
    assert str(not_a_folder) in result.err


def test_validate_needs_a_manifest_unless_schema(cli: Any) -> None:
    result = cli("validate")
    assert result.code == 2 and "missing MANIFEST" in result.err
