"""Sections of docs/benchmarks.md that separate scripts own: each lies between two marker lines.

    <!-- section: memory -->
    ...
    <!-- end: memory -->

A script writes its own with ``put``; a script that rewrites the whole file keeps the others with ``keep``.
"""

from __future__ import annotations

import re


def _pattern(name: str) -> re.Pattern:
    return re.compile(rf"<!-- section: {re.escape(name)} -->\n.*?<!-- end: {re.escape(name)} -->\n?", re.DOTALL)


def block(name: str, body: str) -> str:
    return f"<!-- section: {name} -->\n{body.rstrip()}\n<!-- end: {name} -->\n"


def put(doc: str, name: str, body: str) -> str:
    """``doc`` with section ``name`` replaced by ``body``, or appended when it has none."""
    new = block(name, body)
    if _pattern(name).search(doc):
        return _pattern(name).sub(lambda _: new, doc, count=1)
    return doc.rstrip() + "\n\n" + new if doc.strip() else new


def keep(old: str, new: str) -> str:
    """``new`` with every section of ``old`` that ``new`` lacks appended."""
    for m in re.finditer(r"<!-- section: (.+?) -->\n", old):
        name = m.group(1)
        found = _pattern(name).search(old)
        if found and not _pattern(name).search(new):
            new = new.rstrip() + "\n\n" + found.group(0)
    return new
