"""The CLI under test, run as a subprocess against a fake server, and what it leaves in a run folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from batchgen.fake import ThreadedFakeServer

SECRET = "sk-test-SECRET-4242-do-not-leak"
REPO = Path(__file__).resolve().parents[2]


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("BATCHGEN_API_KEY", "ANYFAST_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY")
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def cli(*args: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: float = 60, stdin: str | None = None) -> Result:
    proc = subprocess.run(
        [sys.executable, "-m", "batchgen", *map(str, args)],
        capture_output=True,
        text=True,
        env=env if env is not None else clean_env(),
        cwd=cwd,
        timeout=timeout,
        input=stdin,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def run_against(server: ThreadedFakeServer, manifest: Path, out: Path, *extra: str | Path,
                provider: str = "anyfast", timeout: float = 60) -> Result:
    return cli(
        "run", manifest, "--out", out, "--base-url", server.url, "--provider", provider,
        "--no-progress", "--backoff", "0.01", *extra,
        env=clean_env(BATCHGEN_API_KEY=SECRET), timeout=timeout,
    )


def spawn(*args: str | Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "batchgen", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )


def ledger_lines(out: Path) -> list[dict[str, object]]:
    import json

    path = out / "ledger.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.02) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def kill_group(proc: subprocess.Popen[str], sig: int = signal.SIGKILL) -> None:
    os.killpg(proc.pid, sig)


def write_manifest(path: Path, prompts: list[str], **fields: object) -> Path:
    import yaml

    jobs = [{"prompt": p, **fields} for p in prompts]
    path.write_text(yaml.safe_dump({"jobs": jobs}))
    return path
