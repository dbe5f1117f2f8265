"""Reading job manifests (YAML, CSV, JSONL) into :class:`~batchgen.spec.JobSpec` streams.

- :mod:`.core`: :class:`Manifest`, the file as a whole: validate, then stream the jobs;
- :mod:`.readers` and :mod:`.yaml_reader`: each format turned into rows with their lines;
- :mod:`.fields`: the rules for each job field (``meta`` too);
- :mod:`.ids`: the readable part of job ids, and matrix templates;
- :mod:`.jobs`: the plan of jobs, one row expanded (count x matrix) into specs;
- :mod:`.build`: job ids and the fast ``JobSpec`` constructor.
"""

from __future__ import annotations

from batchgen.manifest.core import (
    FORMATS,
    MAX_WARNINGS,
    Manifest,
    ManifestHeader,
    ValidationSummary,
)

__all__ = ["FORMATS", "MAX_WARNINGS", "Manifest", "ManifestHeader", "ValidationSummary"]
