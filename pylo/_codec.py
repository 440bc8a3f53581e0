"""Codecs turn inputs, results and exceptions into bytes for a store.

Stores persist opaque bytes; the codec that wrote them is named on the
execution record so any later reader decodes with the same one.
"""

from __future__ import annotations

import builtins
import json
import pickle
import reprlib
from collections.abc import Sequence
from typing import Any, Protocol

from pylo.errors import InputSerializationError, PyloError

__all__ = ["CODECS", "Codec", "JsonCodec", "PickleCodec", "get_codec", "short_repr"]

#: Built-in exception types, groups aside (they hold other exceptions): built
#: from their ``args`` alone, which is how pickle rebuilds them.
_BUILT_IN_EXCEPTIONS = frozenset(
    kind
    for kind in vars(builtins).values()
    if isinstance(kind, type)
    and issubclass(kind, BaseException)
    and not issubclass(kind, getattr(builtins, "BaseExceptionGroup", ()))
)
#: Argument types that pickle and unpickle without running any code of their own.
_PLAIN = frozenset({str, int, float, bool, bytes, type(None)})

_repr = reprlib.Repr()
_repr.maxstring = 60
_repr.maxother = 60


def short_repr(value: object) -> str:
    """A repr for messages: bounded in length and never raising."""
    try:
        return _repr.repr(value)
    except Exception:  # a hostile __repr__ must not hide the real error
        return f"<{type(value).__qualname__} object>"


class Codec(Protocol):
    """Encodes what pylo keeps about inputs in a store."""

    name: str

    def encode_batch(self, items: Sequence[Any], first_position: int) -> bytes:
        """Encode a batch of inputs.

        Raises:
            InputSerializationError: An item cannot be encoded; names its position.
        """

    def decode_batch(self, data: bytes) -> list[Any]:
        """Decode what :meth:`encode_batch` produced."""

    def encode_value(self, value: Any) -> bytes:
        """Encode one value (a task result). Raises whatever the encoder raises."""

    def decode_value(self, data: bytes) -> Any:
        """Decode what :meth:`encode_value` produced."""

    def encode_exception(self, exc: BaseException) -> bytes | None:
        """Encode an exception object, or return None when it cannot be encoded."""

    def decode_exception(self, data: bytes) -> BaseException:
        """Decode an exception object. Raises when it cannot be rebuilt."""


class PickleCodec:
    """The default codec: :mod:`pickle`, highest protocol.

    Fast and able to keep almost any Python object. Decoding a pickle can run
    arbitrary code, so a store written with this codec must be trusted like
    code.
    """

    name = "pickle"
    _protocol = pickle.HIGHEST_PROTOCOL

    def encode_batch(self, items: Sequence[Any], first_position: int) -> bytes:
        try:
            return pickle.dumps(list(items), protocol=self._protocol)
        except Exception:
            # Rare path: find the offending item so the message can name it.
            for offset, item in enumerate(items):
                try:
                    pickle.dumps(item, protocol=self._protocol)
                except Exception as item_exc:
                    raise InputSerializationError(
                        first_position + offset,
                        short_repr(item),
                        f"{type(item_exc).__name__}: {item_exc}; inputs are stored with pickle, "
                        "so they must be picklable (module-level classes and functions, no open "
                        "files, locks or sockets)",
                    ) from item_exc
            raise  # pragma: no cover - the batch failed but no single item did

    def decode_batch(self, data: bytes) -> list[Any]:
        items = pickle.loads(data)
        if not isinstance(items, list):
            raise PyloError(f"a stored batch decoded to {type(items).__name__}, expected list")
        return items

    def encode_value(self, value: Any) -> bytes:
        return pickle.dumps(value, protocol=self._protocol)

    def decode_value(self, data: bytes) -> Any:
        return pickle.loads(data)

    def encode_exception(self, exc: BaseException) -> bytes | None:
        try:
            data = pickle.dumps(exc, protocol=self._protocol)
        except Exception:
            return None
        if type(exc) in _BUILT_IN_EXCEPTIONS and not exc.__dict__ and all(type(arg) in _PLAIN for arg in exc.args):
            # A built-in exception of plain arguments and nothing else (no
            # attribute or note of its own) rebuilds from them: the check
            # below would unpickle it for nothing, the most common failure.
            return data
        # An exception whose constructor needs arguments pickles fine but
        # cannot be rebuilt; find out now, while the text can still stand in.
        try:
            pickle.loads(data)
        except Exception:
            return None
        return data

    def decode_exception(self, data: bytes) -> BaseException:
        exc = pickle.loads(data)
        if not isinstance(exc, BaseException):
            raise TypeError(f"stored exception decoded to {type(exc).__name__}")
        return exc


class JsonCodec:
    """A safe codec: JSON only, so reading a store never unpickles anything.

    Inputs and results must be JSON values that come back equal: None,
    bools, numbers (no NaN or infinity), strings, lists, and dicts with
    string keys. Anything else (a tuple would come back as a list, an int key
    as a string) is refused with a clear error rather than changed silently.
    Exceptions keep their type name, message and traceback as text; the
    exception object itself is not kept.
    """

    name = "json"

    def encode_batch(self, items: Sequence[Any], first_position: int) -> bytes:
        items = list(items)
        try:
            data = self._dumps(items)
            exact = json.loads(data) == items
        except (TypeError, ValueError, RecursionError):
            exact = False
        if exact:
            return data
        for offset, item in enumerate(items):
            reason = self._problem(item)
            if reason is not None:
                raise InputSerializationError(first_position + offset, short_repr(item), reason)
        raise InputSerializationError(first_position, short_repr(items[:1]), "the batch is not valid JSON")

    def decode_batch(self, data: bytes) -> list[Any]:
        items = json.loads(data)
        if not isinstance(items, list):
            raise PyloError(f"a stored batch decoded to {type(items).__name__}, expected list")
        return items

    def encode_value(self, value: Any) -> bytes:
        reason = self._problem(value)
        if reason is not None:
            raise TypeError(reason)
        return self._dumps(value)

    def decode_value(self, data: bytes) -> Any:
        return json.loads(data)

    def encode_exception(self, exc: BaseException) -> bytes | None:
        return None  # the text fields stand in for it

    def decode_exception(self, data: bytes) -> BaseException:
        raise TypeError("the json codec keeps no exception objects")

    @staticmethod
    def _dumps(value: Any) -> bytes:
        return json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":")).encode()

    def _problem(self, value: Any) -> str | None:
        """Why ``value`` does not survive a JSON round trip, or None when it does."""
        try:
            back = json.loads(self._dumps(value))
        except (TypeError, ValueError, RecursionError) as exc:
            return f"not a JSON value ({type(exc).__name__}: {exc}); the json codec stores only JSON values"
        if type(back) is not type(value):
            return (
                f"a {type(value).__name__} would come back from JSON as a {type(back).__name__}; "
                "convert it first, or use the pickle codec"
            )
        if back != value:
            return (
                f"this {type(value).__name__} would come back from JSON changed (tuples inside become "
                "lists, dict keys become strings); convert it first, or use the pickle codec"
            )
        return None


#: Codecs by name. An execution records the name of the one that wrote it.
CODECS: dict[str, Codec] = {"pickle": PickleCodec(), "json": JsonCodec()}


def get_codec(name: str) -> Codec:
    """Return the codec called ``name``.

    Raises:
        ValueError: No codec has that name; the message lists the valid ones.
    """
    try:
        return CODECS[name]
    except (KeyError, TypeError):
        valid = ", ".join(repr(n) for n in sorted(CODECS))
        raise ValueError(f"unknown codec {name!r}; valid codecs: {valid}") from None
