"""A run's configuration: loading it from its sources, storing it with the run, resolving it again.

``run_pipeline(..., config=...)`` takes one source or a list of them, merged
in order (later wins)::

    sources ──► load each ──► normalise ──► deep merge ──► ResolvedConfig
     mapping       loader by      JSON          nested          values (frozen)
     path          suffix or      types         mappings        secret keys and
     scheme://     scheme                       merged          the source of each
     Secret(...)                                                    │
                                                 to_stored ◄────────┤ the run's record:
                                                 (no secret values) │ values, and where
                                                 from_stored ───────┘ each secret comes from

Decisions, documented in ``docs/task-environment.md``:

* **Deep merge.** Nested mappings merge key by key; anything else (a list, a
  scalar, a mapping meeting a non-mapping) is replaced whole by the later
  source. Lists are not concatenated.
* **JSON data.** Keys are strings; values are JSON types. Dates and times
  (TOML, YAML) become ISO-8601 strings and tuples become lists when loaded, so
  the stored configuration equals the loaded one; other types are a
  :class:`~pylo.errors.ConfigError` naming the key.
* **Environment variables**: ``env://APP_`` takes every variable starting
  with ``APP_``, strips the prefix, lower-cases the rest and nests on ``__``
  (``APP_DB__HOST`` is ``db.host``); values stay strings. A prefix is
  required, so the whole environment is never stored by accident.
* **Secrets** come from a source marked ``Secret("vault://...")`` or from a
  loader registered with ``secret=True``. Their values are never stored: the
  stored form keeps the source and the keys, and :func:`from_stored` loads
  the source again. A mapping cannot be secret (it could not be loaded
  again). A later non-secret source that overrides a secret key makes that
  key non-secret.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from pylo.errors import ConfigError
from pylo.pipeline._config_loaders import ConfigLoader, load_source, register_config_loader
from pylo.pipeline._context import FrozenConfig, thaw

__all__ = [
    "ConfigLoader",
    "ResolvedConfig",
    "Secret",
    "SecretSource",
    "describe_changes",
    "from_stored",
    "load_config",
    "register_config_loader",
    "resume_config",
    "to_stored",
]

logger = logging.getLogger(__name__)

#: Version of :func:`to_stored`'s form.
STORED_FORMAT = 1

_Path: TypeAlias = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Secret:
    """Marks a configuration source as secret: its values are not stored with the run.

    On resume the source is loaded again, so it must be a path or a
    ``scheme://`` address whose loader is registered then too.

    Args:
        source: A file path or a ``scheme://`` address.

    Raises:
        TypeError: ``source`` is a mapping or anything else that cannot be
            loaded again.
    """

    source: str

    def __init__(self, source: str | os.PathLike[str]) -> None:
        if isinstance(source, Mapping):
            raise TypeError(
                "a mapping cannot be marked Secret: it could not be loaded again on resume; "
                "put the secrets in a file or behind a registered scheme such as vault://"
            )
        if not isinstance(source, (str, os.PathLike)):
            raise TypeError(f"Secret takes a path or a 'scheme://' address, got {type(source).__name__} {source!r}")
        object.__setattr__(self, "source", os.fspath(source))


@dataclass(frozen=True, slots=True)
class SecretSource:
    """Where the secret values of a configuration come from.

    Attributes:
        source: The path or ``scheme://`` address to load again.
        keys: The key paths (``("db", "password")``) whose values it gave.
    """

    source: str
    keys: tuple[_Path, ...]


@dataclass(frozen=True, slots=True)
class ResolvedConfig:
    """A run's configuration, merged, with what is secret in it.

    Attributes:
        values: The merged configuration, read-only; what tasks see as
            ``context.config``.
        secrets: The secret sources, in the order they were given, each with
            the keys whose final value it gave.
    """

    values: FrozenConfig
    secrets: tuple[SecretSource, ...] = ()

    @property
    def secret_keys(self) -> frozenset[_Path]:
        """Every key path whose value is secret."""
        return frozenset(key for secret in self.secrets for key in secret.keys)


# -- normalising and merging ---------------------------------------------------


def _normalise(value: Any, path: _Path, label: str) -> Any:
    """``value`` as JSON data: dicts, lists, strings, numbers, booleans, None."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (dt.date, dt.time)):  # datetime is a date
        return value.isoformat()
    if isinstance(value, Mapping):
        normalised = {}
        for key, item in value.items():
            if not isinstance(key, str):
                where = ".".join((*path, repr(key)))
                raise ConfigError(f"configuration from {label}: key {where} is {type(key).__name__}, keys are strings")
            normalised[key] = _normalise(item, (*path, key), label)
        return normalised
    if isinstance(value, (list, tuple)):
        return [_normalise(item, path, label) for item in value]
    raise ConfigError(
        f"configuration from {label}: {'.'.join(path)} is {type(value).__name__} {value!r}; "
        "configuration values are JSON data (strings, numbers, booleans, None, lists, mappings)"
    )


def _leaves(value: Any, path: _Path) -> Iterable[_Path]:
    """Key paths of the values under ``path`` (an empty mapping counts as a value)."""
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from _leaves(item, (*path, key))
    else:
        yield path


def _merge(
    into: dict[str, Any], incoming: Mapping[str, Any], path: _Path, secrets: dict[_Path, str], secret: str | None
) -> None:
    """Deep-merge ``incoming`` into ``into``; keep ``secrets`` (key path -> source) up to date."""
    for key, new in incoming.items():
        here = (*path, key)
        old = into.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            _merge(old, new, here, secrets, secret)
            continue
        for stale in [known for known in secrets if known[: len(here)] == here]:
            del secrets[stale]
        into[key] = new
        if secret is not None:
            for leaf in _leaves(new, here):
                secrets[leaf] = secret


def _as_list(sources: Any) -> list[Any]:
    if sources is None:
        return []
    if isinstance(sources, (list, tuple)):
        return list(sources)
    return [sources]


def load_config(sources: Any) -> ResolvedConfig:
    """Load and merge a run's configuration.

    Args:
        sources: None, or one source or a list of them, merged in order
            (later wins, nested mappings merged key by key). A source is a
            mapping, a file path (``str`` or ``os.PathLike``) whose suffix
            picks the loader, a ``"scheme://..."`` address (``env://PREFIX_``
            built in), or a :class:`Secret` wrapping a path or address.

    Returns:
        The merged configuration and where its secret values come from.

    Raises:
        ConfigError: A source cannot be found, has no loader, cannot be read
            or parsed, or holds something that is not JSON data.
        TypeError: A source of another type.
    """
    merged: dict[str, Any] = {}
    secrets: dict[_Path, str] = {}
    order: list[str] = []
    for index, source in enumerate(_as_list(sources)):
        secret_source: str | None = None
        if isinstance(source, Mapping):
            label, loaded = f"the mapping at position {index}", source
        elif isinstance(source, Secret):
            label = repr(source.source)
            loaded, _ = load_source(source.source)
            secret_source = source.source
        elif isinstance(source, (str, os.PathLike)):
            label = repr(os.fspath(source))
            loaded, is_secret = load_source(os.fspath(source))
            secret_source = os.fspath(source) if is_secret else None
        else:
            raise TypeError(
                f"config sources are mappings, paths, 'scheme://' addresses or Secret(...), "
                f"got {type(source).__name__} {source!r} at position {index}"
            )
        if secret_source is not None and secret_source not in order:
            order.append(secret_source)
        _merge(merged, _normalise(loaded, (), label), (), secrets, secret_source)
    return ResolvedConfig(FrozenConfig(merged), _group(secrets, order))


def _group(secrets: Mapping[_Path, str], order: Iterable[str]) -> tuple[SecretSource, ...]:
    grouped = []
    for source in order:
        keys = tuple(sorted(path for path, origin in secrets.items() if origin == source))
        if keys:
            grouped.append(SecretSource(source, keys))
    return tuple(grouped)


# -- storing and resolving again -----------------------------------------------


def _remove(values: dict[str, Any], path: _Path) -> None:
    node = values
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]


def to_stored(resolved: ResolvedConfig) -> dict[str, Any]:
    """The form kept with the run: JSON-serialisable, without secret values.

    Args:
        resolved: What :func:`load_config` returned.

    Returns:
        ``{"format": 1, "values": {...}, "secrets": [{"source": ..., "keys":
        [[...], ...]}, ...]}``: the values with every secret key left out,
        and for each secret source the keys to take from it again.
    """
    values = thaw(resolved.values)
    for secret in resolved.secrets:
        for path in secret.keys:
            _remove(values, path)
    return {
        "format": STORED_FORMAT,
        "values": values,
        "secrets": [
            {"source": secret.source, "keys": [list(path) for path in secret.keys]} for secret in resolved.secrets
        ],
    }


def _get(values: Any, path: _Path) -> Any:
    for part in path:
        if not isinstance(values, Mapping) or part not in values:
            raise KeyError(part)
        values = values[part]
    return values


def _put(values: dict[str, Any], path: _Path, value: Any) -> None:
    node = values
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value


def from_stored(stored: Mapping[str, Any]) -> ResolvedConfig:
    """The configuration of a past run: its stored values, with its secrets loaded again.

    Args:
        stored: What :func:`to_stored` returned (after a JSON round trip).

    Returns:
        The run's configuration as it was, secret values resolved now.

    Raises:
        ConfigError: ``stored`` is not in the stored form, a secret source has
            no loader any more (register it before resuming), cannot be
            loaded, or no longer holds one of the secret keys.
    """
    try:
        if stored.get("format") != STORED_FORMAT:
            raise ValueError(f"format {stored.get('format')!r}, expected {STORED_FORMAT}")
        values = thaw(stored["values"])
        if not isinstance(values, dict):
            raise ValueError("values is not a mapping")
        secrets = tuple(
            SecretSource(str(entry["source"]), tuple(tuple(str(part) for part in key) for key in entry["keys"]))
            for entry in stored["secrets"]
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"the stored configuration is damaged: {type(exc).__name__}: {exc}") from exc
    for secret in secrets:
        try:
            loaded, _ = load_source(secret.source)
        except ConfigError as exc:
            raise ConfigError(f"the run's secret configuration cannot be resolved again: {exc}") from exc
        fresh = _normalise(loaded, (), repr(secret.source))
        for path in secret.keys:
            try:
                _put(values, path, _get(fresh, path))
            except KeyError:
                raise ConfigError(
                    f"the run's secret configuration cannot be resolved again: {secret.source!r} "
                    f"no longer has the key {'.'.join(path)}"
                ) from None
    return ResolvedConfig(FrozenConfig(values), secrets)


def _flatten(values: Mapping[str, Any]) -> dict[_Path, Any]:
    plain = thaw(values)
    return {path: _get(plain, path) for path in _leaves(plain, ())}


def describe_changes(stored: ResolvedConfig, fresh: ResolvedConfig) -> list[str]:
    """What differs between a run's configuration and one loaded now, one line per key.

    Secret values are never shown, only that they changed.

    Args:
        stored: The run's configuration (:func:`from_stored`).
        fresh: The configuration loaded now (:func:`load_config`).

    Returns:
        Lines such as ``"db.host: was 'a', now 'b'"``, ``"retries: was 3,
        now missing"`` or ``"db.password: changed (secret)"``, sorted by key;
        empty when nothing differs.
    """
    before, after = _flatten(stored.values), _flatten(fresh.values)
    secret = stored.secret_keys | fresh.secret_keys
    missing = object()
    lines = []
    for path in sorted(before.keys() | after.keys()):
        old, new = before.get(path, missing), after.get(path, missing)
        if old == new and type(old) is type(new):
            continue
        name = ".".join(path) or "(the whole configuration)"
        if path in secret:
            lines.append(
                f"{name}: {'added' if old is missing else 'removed' if new is missing else 'changed'} (secret)"
            )
        else:
            was = "missing" if old is missing else repr(old)
            now = "missing" if new is missing else repr(new)
            lines.append(f"{name}: was {was}, now {now}")
    return lines


def resume_config(
    stored: Mapping[str, Any], sources: Any = None, *, run_id: str = ""
) -> tuple[ResolvedConfig, list[str]]:
    """The configuration a resume uses (the run's own), and how the sources differ from it now.

    Logs a warning listing the differences when there are some.

    Args:
        stored: The past run's :func:`to_stored` form.
        sources: The ``config=`` given to the resume, or None (nothing to compare).
        run_id: The past run, for the warning.

    Returns:
        The past run's configuration (secrets resolved again), and the lines
        of :func:`describe_changes` (empty when no ``sources`` or no change).

    Raises:
        ConfigError: As :func:`from_stored` and :func:`load_config` do.
    """
    resolved = from_stored(stored)
    if sources is None:
        return resolved, []
    changes = describe_changes(resolved, load_config(sources))
    if changes:
        logger.warning(
            "the configuration changed since run %s; the resume uses the run's own configuration: %s",
            run_id or "(unknown)",
            "; ".join(changes),
        )
    return resolved, changes
