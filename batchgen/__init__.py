"""batchgen: bulk image generation with Gemini 3 Pro Image, resumable and budgeted.

From Python (README, "batchgen from Python")::

    import batchgen

    result = batchgen.run("pets.yaml", out="jobs/pets",
                          settings=batchgen.RunSettings(concurrency=4, budget_usd=5.0))
    for rec in batchgen.records("jobs/pets"):
        print(rec.job_id, rec.status, rec.image)
    ds = batchgen.to_dataset("jobs/pets")  # a datasets.Dataset

Every name below is imported when first used, so ``import batchgen`` (and ``batchgen status``)
loads none of the pipeline.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module that defines it.
_PUBLIC = {
    "run": "batchgen.python_api.running",
    "RunResult": "batchgen.python_api.running",
    "RunStopped": "batchgen.python_api.running",
    "status": "batchgen.python_api.reading",
    "records": "batchgen.python_api.reading",
    "Record": "batchgen.python_api.reading",
    "to_dataset": "batchgen.python_api.reading",
    "RunSettings": "batchgen.settings",
    "Selection": "batchgen.settings",
    "Timeouts": "batchgen.settings",
    "BatchgenError": "batchgen.errors",
    "InputError": "batchgen.errors",
}
__all__ = [
    "BatchgenError", "InputError", "Record", "RunResult", "RunSettings", "RunStopped",
    "Selection", "Timeouts", "__version__", "records", "run", "status", "to_dataset",
]

if TYPE_CHECKING:
    from .errors import BatchgenError, InputError
    from .python_api.reading import Record, records, status, to_dataset
    from .python_api.running import RunResult, RunStopped, run
    from .settings import RunSettings, Selection, Timeouts


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'batchgen' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
