"""Shell patterns of names: module names (``convert(exclude=...)``), model names (``list_models``).

One string is one pattern (iterated, it would make a pattern of each character); a list or tuple is several,
and a name matches when it matches any of them.
"""
from __future__ import annotations

import fnmatch
from typing import Any, Callable, Iterable, Tuple, Union

__all__ = ['as_patterns', 'matches_any']


def as_patterns(value: Union[str, Iterable[str]], error: Callable[[Any], Exception]) -> Tuple[str, ...]:
    """``value`` as a tuple of patterns; ``error(bad)`` is raised for the first one that is not a string."""
    if isinstance(value, str):
        return (value,)
    try:
        patterns = tuple(value)
    except TypeError:
        patterns = (value,)
    bad = [p for p in patterns if not isinstance(p, str)]
    if bad:
        raise error(bad[0])
    return patterns


def matches_any(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)
