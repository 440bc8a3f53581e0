"""Labels: the user's ``str -> str`` tags on an execution, validated where they enter.

``start_from_scratch(..., labels={"job": "nightly"})`` keeps them on the
execution record; ``list_executions(labels=...)`` finds executions by them
through the store's own index. Keys and values are bounded so every store
can index them (a SQL column, a file name's digest).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pylo._codec import short_repr

__all__ = ["MAX_KEY", "MAX_VALUE", "check_labels"]

#: Longest label key, in characters.
MAX_KEY = 64
#: Longest label value, in characters.
MAX_VALUE = 255


def check_labels(labels: Any, name: str = "labels") -> dict[str, str]:
    """Validate labels given by the user; None means none.

    Raises:
        TypeError: Not a mapping of str to str.
        ValueError: A key is empty or too long, a value too long, or either
            holds a control character.
    """
    if labels is None:
        return {}
    if not isinstance(labels, Mapping):
        raise TypeError(f"{name} must be a dict of str to str, got {type(labels).__name__} {short_repr(labels)}")
    checked: dict[str, str] = {}
    for key, value in labels.items():
        if not isinstance(key, str):
            raise TypeError(f"{name} keys must be str, got {type(key).__name__} {short_repr(key)}")
        if not isinstance(value, str):
            raise TypeError(
                f"{name}[{key!r}] must be a str, got {type(value).__name__} {short_repr(value)}; "
                "labels are text (use str(value))"
            )
        if not 1 <= len(key) <= MAX_KEY:
            raise ValueError(f"{name} keys must be 1 to {MAX_KEY} characters, got {short_repr(key)} ({len(key)})")
        if len(value) > MAX_VALUE:
            raise ValueError(f"{name}[{key!r}] must be at most {MAX_VALUE} characters, got {len(value)}")
        for text in (key, value):
            if not text.isprintable():
                raise ValueError(f"{name} must be printable text without control characters, got {text!r}")
        checked[key] = value
    return checked
