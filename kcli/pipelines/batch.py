"""Batch jobs from a prompts file (or stdin): one job per line.

A line is either plain text (the prompt) or a JSON object with the prompt and per-job overrides:

    a lighthouse at dusk
    {"prompt": "a red cat", "seed": 7, "steps": 50, "negative": "blurry", "width": 768}

Blank lines and lines starting with ``#`` are skipped. A line that cannot be read becomes a failed job
(reported at the end); the others still run. The keys a line may set are the settings declared with
``job=True`` (``kcli.pipelines.settings.job_keys``). Without a seed, a job's seed is derived from its line and
prompt, so a rerun makes the same images.
"""

from __future__ import annotations

import json
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from kcli.errors import KandinskyError
from kcli.pipelines.settings import job_keys


@dataclass
class Job:
    line: int
    prompt: str = ""
    overrides: dict = field(default_factory=dict)
    error: str | None = None  # set when the line itself is bad

    def request(self, kind, **defaults):
        """The request of type ``kind`` this job asks for: ``defaults`` under the line's own settings, its seed
        the line's or, without one, derived from the line (``job_seed``)."""
        from kcli.pipelines.settings import settings_of

        if self.error:
            raise KandinskyError(self.error)
        names = {f.name for f in settings_of(kind)}
        values = {**defaults, **{k: v for k, v in self.overrides.items() if k in names}, "prompt": self.prompt}
        made = kind(**{k: v for k, v in values.items() if k in names})
        return made if made.seed is not None else made.seeded(job_seed(self))


def job_seed(job: Job) -> int:
    """A seed for a job that names none: from its line and prompt, so a rerun repeats."""
    return zlib.crc32(f"{job.line}:{job.prompt}".encode()) & 0x7FFFFFFF


def _parse(line: int, text: str, keys: dict) -> Job:
    if not text.startswith("{"):
        return Job(line, prompt=text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        return Job(line, error=f"line {line}: not valid JSON ({e.msg})")
    if not isinstance(data, dict):
        return Job(line, error=f"line {line}: a JSON line must be an object")
    for key, value in data.items():
        want = keys.get(key)
        if want is None:
            return Job(line, error=f"line {line}: unknown key {key!r} (known: {', '.join(keys)})")
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = data[key] = float(value)
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            return Job(line, error=f"line {line}: {key} must be {want.__name__}, got {value!r}")
    if not data.get("prompt"):
        return Job(line, error=f"line {line}: no prompt")
    prompt = data.pop("prompt")
    return Job(line, prompt=prompt, overrides=data)


def read_jobs(source: str, *requests) -> list[Job]:
    """Jobs from a file path, or from standard input when ``source`` is ``-``. ``requests``: the request
    classes whose own job settings a line may also set."""
    if source == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(source).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise KandinskyError(f"prompts file {source} does not exist") from None
        except (OSError, UnicodeDecodeError) as e:
            raise KandinskyError(f"cannot read prompts file {source}: {e}") from None
    keys = job_keys(*requests)
    jobs = [_parse(i, line.strip(), keys) for i, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.strip().startswith("#")]
    if not jobs:
        raise KandinskyError(f"prompts file {source} has no prompts")
    return jobs
