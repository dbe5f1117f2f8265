"""The ``batchgen`` command line: the click group and its commands.

Exit codes: 0 every job succeeded; 1 the run finished and some jobs failed; 2 bad input or usage,
nothing sent; 3 the budget was reached; 4 a fatal error stopped the run (bad key, unknown model,
daily quota, disk full); 130 interrupted.

Only click and batchgen's light modules are imported up front: aiohttp, Pillow, tenacity, tqdm
and the pipeline are imported inside the commands that use them, so ``--help``, ``--version``
and ``status`` start fast (tests/cli/test_startup.py checks ``import batchgen.cli.app`` pulls
none in).
"""

from __future__ import annotations

import click

from .. import __version__
from .fake_cmd import fake_server
from .folder_cmds import cancel, export_cmd, gallery, mark, merge, prune, report, status
from .review_cmd import review
from .run_cmd import estimate, run, validate


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="batchgen")
def main() -> None:
    """Generate images in bulk with Gemini 3 Pro Image: resumable, rate-limited, budgeted."""


for command in (run, validate, status, cancel, fake_server, estimate, report, gallery, prune,
                merge, export_cmd, mark, review):
    main.add_command(command)


if __name__ == "__main__":
    main()
