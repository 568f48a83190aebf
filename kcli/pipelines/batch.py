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


MAX_LINE = 16 * 1024  # bytes: a prompt is at most 77 tokens, a JSON line with every setting far below this
MAX_JOBS = 100_000  # a bigger batch is split into several files (or run on a cluster)


def read_jobs(source: str, *requests) -> list[Job]:
    """Jobs from a file path, or from standard input when ``source`` is ``-``. ``requests``: the request
    classes whose own job settings a line may also set.

    Read as a stream, a line at a time with a bound on its length and on the number of jobs, so that
    ``/dev/zero`` or a picture given by mistake ends in one line instead of filling the memory. A line that is
    not UTF-8 text becomes a failed job; the others still run."""
    keys = job_keys(*requests)
    jobs = []
    try:
        with (_stdin() if source == "-" else open(source, "rb")) as stream:
            for number, raw in _lines(stream, source):
                try:
                    text = raw.decode("utf-8").strip()
                except UnicodeDecodeError:
                    jobs.append(Job(number, error=f"line {number}: not UTF-8 text"))
                    continue
                if not text or text.startswith("#"):
                    continue
                if len(jobs) == MAX_JOBS:
                    raise KandinskyError(f"prompts file {source} has more than {MAX_JOBS} jobs: split it")
                jobs.append(_checked_text(_parse(number, text, keys)))
    except FileNotFoundError:
        raise KandinskyError(f"prompts file {source} does not exist") from None
    except IsADirectoryError:
        raise KandinskyError(f"prompts file {source} is a folder") from None
    except OSError as e:
        raise KandinskyError(f"cannot read prompts file {source}: {e.strerror or e}") from None
    if not jobs:
        raise KandinskyError(f"prompts file {source} has no prompts")
    return jobs


def _stdin():
    import contextlib

    return contextlib.nullcontext(sys.stdin.buffer)


def _lines(stream, source: str):
    number = 0
    while raw := stream.readline(MAX_LINE + 1):
        number += 1
        if len(raw) > MAX_LINE:
            raise KandinskyError(f"prompts file {source}: line {number} is longer than {MAX_LINE // 1024} KiB "
                                 "(is it a text file of prompts?)")
        yield number, raw


def _checked_text(job: Job) -> Job:
    """A JSON line can spell a lone surrogate (``"\\ud800"``), which no file, tokenizer or metadata can hold."""
    texts = [job.prompt, *(v for v in job.overrides.values() if isinstance(v, str))]
    try:
        for t in texts:
            t.encode("utf-8")
    except UnicodeEncodeError:
        return Job(job.line, error=f"line {job.line}: the text holds a lone surrogate (an invalid \\u escape)")
    return job
