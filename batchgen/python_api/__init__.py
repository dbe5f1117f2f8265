"""batchgen from Python: what ``import batchgen`` offers notebooks and pipelines.

running.py  a manifest (a path, a dict, or a list of job dicts) + typed options -> RunResult
reading.py  a run folder -> status, typed records per job, a ``datasets.Dataset``

The package's ``__init__`` imports these lazily (``batchgen.run`` loads the pipeline when it is
first used), so ``import batchgen`` and ``batchgen status`` stay as light as before.
"""
