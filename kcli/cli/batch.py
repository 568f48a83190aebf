"""Batch jobs from a prompts file (or stdin): one job per line.

A line is either plain text (the prompt) or a JSON object with the prompt and per-job overrides:

    a lighthouse at dusk
    {"prompt": "a red cat", "seed": 7, "steps": 50, "negative": "blurry", "width": 768}
    {"prompt": "a robot", "hint": "depth/cat.png"}   (generate with the depth ControlNet: this job's hint)

Blank lines and lines starting with ``#`` are skipped. A line that cannot be read becomes a failed job
(reported at the end); the others still run.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from kcli.loading.errors import KandinskyError

OVERRIDES = {"prompt": str, "negative": str, "seed": int, "width": int, "height": int, "steps": int,
             "prior_steps": int, "guidance": float, "prior_guidance": float, "num_images": int, "sampler": str,
             "name": str, "hint": str}


@dataclass
class Job:
    line: int
    prompt: str = ""
    overrides: dict = field(default_factory=dict)
    error: str | None = None  # set when the line itself is bad


def _parse(line: int, text: str) -> Job:
    if not text.startswith("{"):
        return Job(line, prompt=text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        return Job(line, error=f"line {line}: not valid JSON ({e.msg})")
    if not isinstance(data, dict):
        return Job(line, error=f"line {line}: a JSON line must be an object")
    for key, value in data.items():
        want = OVERRIDES.get(key)
        if want is None:
            return Job(line, error=f"line {line}: unknown key {key!r} (known: {', '.join(OVERRIDES)})")
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = data[key] = float(value)
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            return Job(line, error=f"line {line}: {key} must be {want.__name__}, got {value!r}")
    if not data.get("prompt"):
        return Job(line, error=f"line {line}: no prompt")
    prompt = data.pop("prompt")
    return Job(line, prompt=prompt, overrides=data)


def read_jobs(source: str) -> list[Job]:
    """Jobs from a file path, or from standard input when ``source`` is ``-``."""
    if source == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(source).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise KandinskyError(f"prompts file {source} does not exist") from None
        except (OSError, UnicodeDecodeError) as e:
            raise KandinskyError(f"cannot read prompts file {source}: {e}") from None
    jobs = [_parse(i, line.strip()) for i, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.strip().startswith("#")]
    if not jobs:
        raise KandinskyError(f"prompts file {source} has no prompts")
    return jobs
