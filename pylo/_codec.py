"""Codecs turn inputs, results and exceptions into bytes for a store.

Stores persist opaque bytes; the codec that wrote them is named on the
execution record so any later reader decodes with the same one.
"""

from __future__ import annotations

import pickle
import reprlib
from collections.abc import Sequence
from typing import Any, Protocol

from pylo.errors import InputSerializationError, PyloError

__all__ = ["CODECS", "Codec", "PickleCodec", "get_codec", "short_repr"]

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


#: Codecs by name. An execution records the name of the one that wrote it.
CODECS: dict[str, Codec] = {"pickle": PickleCodec()}


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
