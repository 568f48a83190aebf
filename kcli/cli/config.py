"""Presets and the user's config file: settings by name, with one precedence everywhere.

    built-in defaults  <  user config  <  --preset  <  flags given on the command line

Presets live in ``presets/`` (built in) and in a ``presets/`` folder beside the user config (the user's
own, found first). Both are TOML files of ``key = value`` lines whose keys are the settings' names, as
declared in ``kcli.pipelines.settings`` (``prior_steps = 10``; the flag is ``--prior-steps``). The user config may also name a default ``preset``. An unknown key is an error
naming the key and the file, so a typo never passes silently.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from kcli.errors import KandinskyError
from kcli.pipelines import settings
from kcli.pipelines.requests import REQUESTS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRESETS_DIR = Path(__file__).resolve().parents[2] / "presets"  # in a checkout; a wheel has kcli/presets
SETTING_TYPES = settings.file_keys(*REQUESTS)  # every setting declared with file=True
CONFIG_ONLY = settings.CONFIG_ONLY


def config_path() -> Path:
    env = os.environ.get("KANDINSKY_CONFIG")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_config_dir

    return Path(user_config_dir("kandinsky", appauthor=False)) / "config.toml"


def presets_dir() -> Path:
    if PRESETS_DIR.is_dir():
        return PRESETS_DIR
    from importlib.resources import files

    return Path(str(files("kcli.presets") / "default.toml")).parent  # a data-only package: go via a file


def _preset_dirs() -> list[Path]:
    """The user's presets (a ``presets/`` folder beside the config file) first, then the built-in ones."""
    return [config_path().parent / "presets", presets_dir()]


def preset_names() -> list[str]:
    return sorted({p.stem for d in _preset_dirs() for p in d.glob("*.toml")})


def _read(path: Path, allowed: dict) -> dict:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise KandinskyError(f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise KandinskyError(f"{path} is not valid TOML: {e}") from None
    for key, value in data.items():
        if key not in allowed:
            raise KandinskyError(f"{path}: unknown key {key!r} (known: {', '.join(sorted(allowed))})")
        want = allowed[key]
        ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            ok, data[key] = True, float(value)
        if not ok:
            raise KandinskyError(f"{path}: {key} must be {want.__name__}, got {value!r}")
    return data


def load_config() -> dict:
    path = config_path()
    return _read(path, {**SETTING_TYPES, **CONFIG_ONLY}) if path.is_file() else {}


def load_preset(name: str) -> dict:
    """A preset by name, from the presets folders only: a path (``../x``, ``/etc/x``) is refused."""
    if not re.fullmatch(r"\w[\w.-]*", name) or name.endswith(".toml"):
        raise KandinskyError(f"--preset {name!r}: a preset is a name from the presets folders, not a path "
                             f"(known: {', '.join(preset_names()) or 'none'}; add your own to "
                             f"{_preset_dirs()[0]})")
    for folder in _preset_dirs():
        if (folder / f"{name}.toml").is_file():
            return _read(folder / f"{name}.toml", SETTING_TYPES)
    raise KandinskyError(f"unknown preset {name!r} (known: {', '.join(preset_names()) or 'none'})")


def layered(preset: str | None) -> tuple[dict, str | None]:
    """Settings from the user config and the preset (the flag's, else the config's), preset winning."""
    config = load_config()
    name = preset or config.pop("preset", None)
    config.pop("preset", None)
    config.pop("cache_dir", None)
    return {**config, **(load_preset(name) if name else {})}, name
