"""How each kind of configuration source is loaded: built-in loaders and the registry.

A source is a file path, whose suffix picks the loader (``.json``,
``.toml``, ``.yml``/``.yaml``), or a ``scheme://`` address (``env://PREFIX_``
built in). :func:`register_config_loader` adds or replaces one; a loader
registered with ``secret=True`` (a vault) makes what it loads secret. The
loaders run in the coordinator's process only: tasks see the merged result
in their context.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

from pylo.errors import ConfigError

__all__ = ["ConfigLoader", "load_env", "load_json", "load_source", "load_toml", "load_yaml", "register_config_loader"]

#: A loader: called with the source as the user wrote it (a path with ``~``
#: expanded, or the whole ``scheme://...`` address), returns a mapping.
ConfigLoader: TypeAlias = Callable[[str], Mapping[str, Any]]

_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")
_Path: TypeAlias = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Registration:
    loader: ConfigLoader
    secret: bool


# -- built-in loaders ----------------------------------------------------------


def _top_level_mapping(value: Any, source: str) -> Mapping[str, Any]:
    if value is None:
        return {}  # an empty YAML file
    if not isinstance(value, Mapping):
        raise ConfigError(f"configuration from {source} must be a mapping at the top level, got {type(value).__name__}")
    return value


def load_json(source: str) -> Mapping[str, Any]:
    """Read a JSON file."""
    with open(source, encoding="utf-8") as file:
        return _top_level_mapping(json.load(file), source)


def load_toml(source: str) -> Mapping[str, Any]:
    """Read a TOML file (``tomllib``; ``tomli`` on Python 3.10)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError as exc:
            raise ConfigError(f"reading {source} needs tomli on Python 3.10: pip install tomli") from exc
    with open(source, "rb") as file:
        return _top_level_mapping(tomllib.load(file), source)


def load_yaml(source: str) -> Mapping[str, Any]:
    """Read a YAML file with PyYAML's ``safe_load`` (an optional dependency)."""
    try:
        import yaml  # type: ignore[import-untyped, unused-ignore]  # types-PyYAML may not be installed
    except ImportError as exc:
        raise ConfigError(
            f"reading {source} needs PyYAML, which is not installed: pip install pyyaml "
            "(or pip install '.[yaml]' from a checkout of pylo)"
        ) from exc
    with open(source, encoding="utf-8") as file:
        return _top_level_mapping(yaml.safe_load(file), source)


def load_env(source: str) -> Mapping[str, Any]:
    """Environment variables by prefix: ``env://APP_`` (see the module docstring)."""
    prefix = source[len("env://") :]
    if not prefix:
        raise ConfigError(
            "env:// needs a prefix, such as env://MYAPP_: the whole environment would be taken (and stored)"
        )
    values: dict[str, Any] = {}
    origins: dict[_Path, str] = {}
    for name in sorted(os.environ):
        if not name.startswith(prefix) or name == prefix:
            continue
        path = tuple(name[len(prefix) :].lower().split("__"))
        if not all(path):
            raise ConfigError(f"environment variable {name} has an empty key part between '__' separators")
        for depth in range(1, len(path) + 1):
            clash = origins.get(path[:depth]) if depth < len(path) else None
            if clash is not None:
                raise ConfigError(f"environment variables {clash} and {name} both set {'.'.join(path[:depth])}")
        node = values
        for part in path[:-1]:
            node = node.setdefault(part, {})
        if isinstance(node.get(path[-1]), dict):
            raise ConfigError(f"environment variable {name} sets {'.'.join(path)}, which other variables nest under")
        node[path[-1]] = os.environ[name]
        origins[path] = name
    return values


_BUILT_IN: dict[str, _Registration] = {
    ".json": _Registration(load_json, False),
    ".toml": _Registration(load_toml, False),
    ".yaml": _Registration(load_yaml, False),
    ".yml": _Registration(load_yaml, False),
    "env://": _Registration(load_env, False),
}
_LOADERS: dict[str, _Registration] = dict(_BUILT_IN)


def register_config_loader(suffix_or_scheme: str, loader: ConfigLoader, *, secret: bool = False) -> None:
    """Add (or replace) how a kind of configuration source is loaded.

    Args:
        suffix_or_scheme: A file suffix starting with a dot (``".ini"``,
            ``".secrets.json"``: the longest registered suffix of a file name
            wins, case-insensitively), or a scheme ending in ``://``
            (``"vault://"``). A built-in one (``.json``, ``.toml``,
            ``.yaml``, ``.yml``, ``env://``) may be replaced.
        loader: Called with the source (a path with ``~`` expanded, or the
            whole ``scheme://...`` address); returns a mapping with string
            keys and JSON values. Whatever it raises becomes a
            :class:`~pylo.errors.ConfigError` naming the source.
        secret: Everything this loader returns is secret: never stored with
            the run, loaded again on resume (a secrets vault).

    Raises:
        TypeError: ``loader`` is not callable, or an argument has the wrong type.
        ValueError: ``suffix_or_scheme`` is neither ``".suffix"`` nor ``"scheme://"``.
    """
    if not isinstance(suffix_or_scheme, str):
        raise TypeError(f"suffix_or_scheme must be a string, got {type(suffix_or_scheme).__name__}")
    if not callable(loader):
        raise TypeError(f"loader must be callable (source -> mapping), got {type(loader).__name__} {loader!r}")
    if not isinstance(secret, bool):
        raise TypeError(f"secret must be True or False, got {secret!r}")
    key = suffix_or_scheme.lower()
    if key.endswith("://"):
        if not _SCHEME.fullmatch(key[:-3]):
            raise ValueError(
                f"scheme {suffix_or_scheme!r} is not valid: a letter, then letters, digits, '+', '-' or '.', "
                "then '://', such as 'vault://'"
            )
    elif key.startswith("."):
        if len(key) < 2 or key.endswith(".") or any(char in key for char in "/\\ \t\n:"):
            raise ValueError(f"suffix {suffix_or_scheme!r} is not valid: use a file suffix such as '.ini'")
    else:
        raise ValueError(
            f"suffix_or_scheme must be a file suffix starting with '.' (such as '.ini') or a scheme ending "
            f"in '://' (such as 'vault://'), got {suffix_or_scheme!r}"
        )
    _LOADERS[key] = _Registration(loader, secret)


def _known() -> str:
    return ", ".join(sorted(_LOADERS))


def _registration(source: str) -> tuple[str, _Registration]:
    """The loader for ``source`` and the string to pass it."""
    scheme, separator, _ = source.partition("://")
    if separator and _SCHEME.fullmatch(scheme.lower()):
        registration = _LOADERS.get(scheme.lower() + "://")
        if registration is None:
            raise ConfigError(
                f"no configuration loader for {scheme}:// (in {source!r}); known: {_known()}; "
                "add one with pylo.pipeline.register_config_loader"
            )
        return source, registration
    path = os.path.expanduser(source)
    name = Path(path).name.lower()
    suffixes = [key for key in _LOADERS if key.startswith(".") and name.endswith(key) and name != key]
    if not suffixes:
        raise ConfigError(
            f"no configuration loader for the file {source!r}; known suffixes and schemes: {_known()}; "
            "add one with pylo.pipeline.register_config_loader"
        )
    if not os.path.isfile(path):
        raise ConfigError(f"configuration file {source!r} not found")
    return path, _LOADERS[max(suffixes, key=len)]


def load_source(source: str) -> tuple[Mapping[str, Any], bool]:
    """Load one path or address: its mapping, and whether its loader is secret."""
    argument, registration = _registration(source)
    try:
        loaded = registration.loader(argument)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"could not load configuration from {source!r}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(loaded, Mapping):
        raise ConfigError(f"the loader for {source!r} returned {type(loaded).__name__}, not a mapping")
    return loaded, registration.secret
