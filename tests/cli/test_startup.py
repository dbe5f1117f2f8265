"""Start-up: ``status``, ``--help`` and ``--version`` import none of the pipeline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers.cli import clean_env

# -- start-up ------------------------------------------------------------------------------


def test_importing_the_cli_pulls_in_no_heavy_dependency() -> None:
    code = (
        "import sys, batchgen.cli.app; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'aiohttp', 'PIL', 'tenacity', 'tqdm', 'yaml', 'asyncio', 'pyarrow'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=clean_env())
    assert out.stdout.strip() == "[]", out.stdout


def test_status_help_and_version_do_not_import_the_pipeline(tmp_path: Path) -> None:
    code = (
        "import sys, runpy; sys.argv = ['batchgen', *sys.argv[1:]]\n"
        "try:\n    runpy.run_module('batchgen', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'aiohttp', 'PIL', 'tenacity', 'tqdm', 'yaml', 'asyncio', "
        # and the standard library's heavier parts that only a run needs (~15 ms together)
        "'hashlib', 'concurrent', 'tempfile'}) + sorted(set(sys.modules) & "
        # and the planner, whose dataclasses alone take ~15 ms to build, and the option-rendering
        # messages (~6 ms)
        "{'batchgen.planning.plan', 'batchgen.spec', 'batchgen.store.images', "
        "'batchgen.reporting.report', 'batchgen.cli.messages'}), "
        "file=sys.stderr)"
    )
    (tmp_path / "ledger.jsonl").write_text("")
    for args in (["--version"], ["--help"], ["status", str(tmp_path)]):
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                             text=True, env=clean_env())
        assert out.stderr.strip().splitlines()[-1] == "[]", (args, out.stderr)
