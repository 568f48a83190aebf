"""The model cache, for programs and the ``models`` commands: what is known, what is cached, fetching ahead
of time, checking and freeing space. A thin public face over ``kcli.loading`` (files only, no torch)."""

from __future__ import annotations

from kcli.loading.cache import home
from kcli.loading.download import (
    cache_dir,
    disk_usage,
    fetch,
    human_size,
    inspect,
    recorded_files,
    remove,
    repo_folder,
    verify,
)
from kcli.loading.hub import not_cached_message, owner, pull_hint, repo_spec, target
from kcli.loading.registry import PARTS, FileSpec, load_registry

__all__ = ["PARTS", "FileSpec", "cache_dir", "disk_usage", "fetch", "home", "human_size", "inspect", "load_registry",
           "not_cached_message", "owner", "pull_hint", "recorded_files", "remove", "repo_folder", "repo_spec",
           "target", "verify"]
