"""Manifest rows and ledger lines written by hand, for the planning, id and gallery tests."""

from __future__ import annotations

import json
from pathlib import Path

import orjson

ROWS = [
    {"prompt": "a small watercolor of a fox, study number 1"},
    {"prompt": "  Café crème à la française  "},
    {"prompt": "日本語のプロンプト"},
    {"prompt": "!!!"},
    {"prompt": "{literal} braces and 100% & more"},
    {"prompt": "tabs\tand\u2003spaces\u00a0here\x1cx y z w"},
    {"prompt": "a fox", "count": 3},
    {"prompt": "a fox", "id": "user id 7!"},
    {"prompt": "a fox", "aspect_ratio": "16:9", "image_size": "2k", "temperature": 1, "seed": 42},
    {"prompt": "a {color} {animal}", "vars": {"animal": ["cat", 3, 1.5],
                                             "color": ["réd", "blue!!"]}, "count": 2},
    {"prompt": "a fox", "output_text": True, "model": "gemini-2.5-flash-image"},
    {"prompt": "a fox", "temperature": 0.7, "id": "Ünïcode-1"},
    {"prompt": "a fox with nulls", "seed": None, "aspect_ratio": None},
]


def _jsonl(path: Path) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS), "utf-8")
    return path


def _ledger_line(job_id: str, outputs: list[str]) -> bytes:
    return orjson.dumps({"job_id": job_id, "status": "succeeded", "prompt": job_id,
                         "attempts": 1, "outputs": outputs, "cost_usd": 0.01}) + b"\n"
