"""Settings objects passed whole: build one from a mapping, and name where a setting passed on its own went.

Every stage takes its settings as one frozen dataclass (:class:`apmae.mining.settings.MiningConfig`,
:class:`apmae.cache.settings.ExtractionSettings`, ...): a nested block in a config, an object or a
plain dict in Python. :func:`settings_of` turns any of those into the object; :func:`refuse_moved`
answers a call that still passes the fields one by one with the call to write instead.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, TypeVar

T = TypeVar("T")


def field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def settings_of(cls: type[T], value: Any, key: str) -> T:
    """``value`` as a ``cls``: itself, one built from a mapping of its fields, or (None) the defaults.

    Raises:
        TypeError: a mapping with keys that are not fields of ``cls`` (named), or another kind of value.
    """
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(field_names(cls)))
        if unknown:
            raise TypeError(f"{key}={dict(value)!r}: {unknown} are not {cls.__name__} fields; "
                            f"use {list(field_names(cls))}")
        return cls(**value)
    raise TypeError(f"{key}={value!r}: pass {key}={cls.__name__}(...) or a dict of its fields "
                    f"(in a config, a nested mapping under {key}:)")


def check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    """Raises ``ValueError`` naming ``key`` when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{key}={value!r}; use one of {list(choices)}")


def refuse_moved(owner: str, arguments: Mapping[str, Any], cls: type, key: str, param: str | None = None) -> None:
    """Refuse the ``cls`` fields ``owner`` once took one by one, naming the ``param=cls(...)`` that takes them now.

    ``key`` is the settings' block in a config, ``param`` the argument of ``owner`` that takes them
    (default ``key``).

    Raises:
        TypeError: any of ``arguments`` (a ``**kwargs`` catch-all); a field of ``cls`` gets the call to write.
    """
    if not arguments:
        return
    param = param or key
    other = sorted(set(arguments) - set(field_names(cls)))
    if other:
        raise TypeError(f"{owner} got unexpected arguments {other}")
    example = ", ".join(f"{k}={arguments[k]!r}" for k in sorted(arguments))
    raise TypeError(f"{owner}: {sorted(arguments)} moved into the {key} settings: pass "
                    f"{param}={cls.__name__}({example}) (or a dict of those fields; in a config, a `{key}:` block)")


__all__ = ["check_choice", "field_names", "refuse_moved", "settings_of"]
