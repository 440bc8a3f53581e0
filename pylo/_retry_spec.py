"""A retry policy as data: what an execution record keeps, and what ``pylo resume`` rebuilds.

tenacity policies are objects holding callables; only the common shape,
"N attempts in all, then give up, with a fixed or exponential wait between
them, retrying any ``Exception``", can be written down as JSON and made
again. Anything else (a custom ``retry=`` predicate, callbacks, another stop
condition) is described as ``"custom"``: it was recorded, but only the code
that made it can make it again.

The description (a stored format: keep the keys)::

    None                                  no retries
    "custom"                              a policy that is not data
    {"attempts": 4,                       attempts in all, the first included
     "wait": None                         no wait between attempts
           | {"fixed": 1.5}               seconds
           | {"exponential": {"multiplier": 0.1, "min": 0, "max": 2, "exp_base": 2}},
     "reraise": True}
"""

from __future__ import annotations

from typing import Any

__all__ = ["CUSTOM", "build_policy", "describe_retry"]

#: How a retry policy that is not data is recorded.
CUSTOM = "custom"


def describe_retry(policy: Any) -> dict[str, Any] | str | None:
    """The JSON description of ``policy``: None, ``"custom"`` or a mapping (see the module docstring)."""
    if policy is None:
        return None
    import tenacity

    if type(policy) not in (tenacity.Retrying, tenacity.AsyncRetrying):
        return CUSTOM
    stop, wait, retry = policy.stop, policy.wait, policy.retry
    defaults = (
        policy.before is tenacity.before_nothing
        and policy.after is tenacity.after_nothing
        and policy.before_sleep is None
        and policy.retry_error_callback is None
        and policy.retry_error_cls is tenacity.RetryError
    )
    if not defaults or not isinstance(stop, tenacity.stop_after_attempt):
        return CUSTOM
    if type(retry) is not tenacity.retry_if_exception_type or retry.exception_types is not Exception:
        return CUSTOM
    wait_spec: dict[str, Any] | None
    if type(wait) in (tenacity.wait_none, tenacity.wait_fixed):
        seconds = float(wait.wait_fixed)
        wait_spec = None if seconds == 0 else {"fixed": seconds}
    elif type(wait) is tenacity.wait_exponential:
        wait_spec = {
            "exponential": {
                "multiplier": float(wait.multiplier),
                "min": float(wait.min),
                "max": float(wait.max),
                "exp_base": float(wait.exp_base),
            }
        }
    else:
        return CUSTOM
    return {"attempts": int(stop.max_attempt_number), "wait": wait_spec, "reraise": bool(policy.reraise)}


def build_policy(description: dict[str, Any], *, asynchronous: bool) -> Any:
    """The tenacity policy a mapping made by :func:`describe_retry` describes.

    Raises:
        ValueError: ``description`` is not such a mapping.
    """
    import tenacity

    try:
        attempts = int(description["attempts"])
        wait_spec = description.get("wait")
        wait: Any
        if wait_spec is None:
            wait = tenacity.wait_none()
        elif "fixed" in wait_spec:
            wait = tenacity.wait_fixed(float(wait_spec["fixed"]))
        else:
            wait = tenacity.wait_exponential(**{k: float(v) for k, v in wait_spec["exponential"].items()})
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"not a retry policy description: {description!r}") from exc
    policy = tenacity.AsyncRetrying if asynchronous else tenacity.Retrying
    return policy(stop=tenacity.stop_after_attempt(attempts), wait=wait, reraise=bool(description.get("reraise", True)))
