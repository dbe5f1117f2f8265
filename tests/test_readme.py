"""The README is the user's reference: it must name every command, option, job field and exit
code, its links must lead somewhere, and "Your first dataset" must work exactly as written.

The command and option lists are read from click itself, so a new flag without a line in the
README fails here; the walkthrough's shell block is run with bash in an empty folder (it uses
``--fake``), and every ``#>`` line under a command must appear in what the commands printed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from batchgen.cli.app import main
from batchgen.exits import ExitCode
from batchgen.manifest.fields import JOB_FIELDS, MANIFEST_KEYS
from tests.helpers.cli import REPO, clean_env

README = (REPO / "README.md").read_text(encoding="utf-8")
COMMANDS: dict[str, click.Command] = dict(main.commands)  # type: ignore[attr-defined]


def section(heading: str, text: str = README) -> str:
    """The text under a markdown heading, up to the next heading of the same or a higher level."""
    lines = text.splitlines()
    level = len(heading) - len(heading.lstrip("#"))
    try:
        start = lines.index(heading)
    except ValueError:
        pytest.fail(f"README has no heading {heading!r}")
    body = []
    for line in lines[start + 1 :]:
        m = re.match(r"(#+) ", line)
        if m and len(m.group(1)) <= level and not _in_fence(body):
            break
        body.append(line)
    return "\n".join(body)


def _in_fence(lines: list[str]) -> bool:
    return sum(1 for line in lines if line.startswith("```")) % 2 == 1


def option_names(command: click.Command) -> list[str]:
    names = []
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:  # hidden: test hooks
            names.extend(n for n in param.opts + param.secondary_opts if n != "--help")
    return names


def test_every_command_has_a_section() -> None:
    assert len(COMMANDS) >= 12
    missing = [name for name in COMMANDS if f"### `batchgen {name}`" not in README.splitlines()]
    assert not missing, f"commands without a '### `batchgen NAME`' section: {missing}"
    contents = section("## Contents")
    assert not [n for n in COMMANDS if f"(#batchgen-{n})" not in contents]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_is_documented_in_its_commands_section(name: str) -> None:
    body = section(f"### `batchgen {name}`")
    missing = [opt for opt in option_names(COMMANDS[name])
               if not re.search(rf"`[^`]*(?<![\w-]){re.escape(opt)}(?![\w-])", body)]
    assert not missing, f"batchgen {name}: options the README's section does not name: {missing}"


def test_the_option_check_can_fail() -> None:
    body = section("### `batchgen gallery`")
    assert re.search(r"`[^`]*(?<![\w-])--out(?![\w-])", body)
    assert not re.search(r"`[^`]*(?<![\w-])--ou(?![\w-])", body)


def test_every_job_field_and_manifest_key_is_documented() -> None:
    fields = section("### Job fields")
    missing = [f for f in JOB_FIELDS if f"| `{f}` |" not in fields]
    assert not missing, f"job fields without a row in the Job fields table: {missing}"
    formats = section("### Formats")
    assert not [k for k in MANIFEST_KEYS if f"`{k}`" not in formats]


def test_the_csv_metadata_rule_is_stated_where_a_csv_user_looks() -> None:
    walkthrough = section("## Your first dataset")
    meta = section("### Your own fields: `meta`")
    for text in (walkthrough, meta):
        assert "`meta.<key>`" in text
    assert meta.lstrip().startswith("> **In a CSV, your own fields are columns named `meta.<key>`")


def test_every_exit_code_is_in_the_table() -> None:
    table = section("## Output and exit codes")
    missing = [code for code in ExitCode if f"| {int(code)} |" not in table]
    assert not missing, f"exit codes missing from the table: {missing}"
    assert "stderr" in table and "stdout" in table


def test_no_issue_numbers() -> None:
    assert not re.findall(r"[Ii]ssues? #?\d+", README)


def _slug(heading: str) -> str:
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def test_links_lead_somewhere() -> None:
    anchors = {_slug(m.group(2)) for m in re.finditer(r"^(#+) (.+)$", README, re.M)}
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", README):
        if target.startswith("#"):
            if target[1:] not in anchors:
                broken.append(target)
        elif not re.match(r"https?://", target) and not (REPO / target.split("#")[0]).exists():
            broken.append(target)
    assert not broken, f"links to nowhere: {broken}"


def _pattern(line: str) -> str:
    """An expected line as a regex; a duration such as 0.1s matches any duration."""
    return r"\d+\.\d+s".join(re.escape(part) for part in re.split(r"\d+\.\d+s", line))


def _fenced(body: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", body, re.M | re.S)


def test_first_dataset_walkthrough_runs_as_written(tmp_path: Path) -> None:
    body = section("## Your first dataset")
    script = _fenced(body, "bash")[0]
    assert "--fake" in script and "batchgen export" in script
    # `batchgen` as the user's shell finds it, running this checkout with this interpreter.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    shim = bindir / "batchgen"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m batchgen "$@"\n')
    shim.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    env = clean_env(PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
                    PYTHONPATH=str(REPO), HF_DATASETS_CACHE=str(tmp_path / "hf"),
                    HF_HUB_OFFLINE="1")
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work, env=env,
                          capture_output=True, text=True, timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    expected = [line[3:] for line in script.splitlines() if line.startswith("#> ")]
    assert len(expected) >= 6
    missing = [line for line in expected if not re.search(_pattern(line), output)]
    assert not missing, f"expected lines not printed: {missing}\n--- output:\n{output}"
    assert len(list((work / "jobs" / "pets" / "images").rglob("*.png"))) == 3
    assert (work / "pets-dataset" / "metadata.jsonl").exists()

    pytest.importorskip("datasets")
    loader = _fenced(body, "python")[0]
    done = subprocess.run([sys.executable, "-c", loader], cwd=work, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in {
        "(64, 64) cat a ginger cat asleep on a sofa",
        "(64, 64) dog a beagle puppy in the grass",
        "(64, 64) bird a snowy owl on a branch at dusk",
    }, done.stdout


def _make_plan(target: str, venv: Path) -> str:
    """What `make TARGET` would run on a fresh clone (no venv yet), without running it."""
    if not shutil.which("make"):
        pytest.skip("no make")
    proc = subprocess.run(["make", "-n", target, f"VENV={venv}"], cwd=REPO, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_make_demo_installs_the_package_alone(tmp_path: Path) -> None:
    demo = _make_plan("demo", tmp_path / "venv")
    installs = [line for line in demo.splitlines() if "pip install" in line]
    assert installs and all("[test]" not in line for line in installs), demo
    assert any(line.rstrip().endswith("-e .") for line in installs), demo
    assert "batchgen run sample_manifests/quickstart.yaml --fake" in demo
    # The test tools come with `make test` and `make lint`, under the stamp .ci/run touches.
    for target in ("test", "lint"):
        plan = _make_plan(target, tmp_path / "venv")
        assert "-e '.[test]'" in plan and f"touch {tmp_path / 'venv'}/.installed\n" in plan, plan
    ci = (REPO / ".ci" / "run").read_text()
    assert "touch .venv/.installed" in ci and "make test" in ci
