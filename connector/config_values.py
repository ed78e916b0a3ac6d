"""One value of a configuration table, read as what it must be: a key the table does not
know is named with its near miss, and a value of the wrong type is said, never converted (a
TOML `"false"` would be true)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any


def unknown_keys(where: str, table: dict[str, Any], known: Iterable[str]) -> list[str]:
    known = sorted(known)
    return [
        f"{where}: unknown key {key!r}{did_you_mean(key, known)} (known: {', '.join(known)})"
        for key in table
        if key not in known
    ]


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`; did you mean 'x'?` for a near miss among `known`, else nothing."""
    by_lower = {k.lower(): k for k in known}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.75)
    return f"; did you mean {by_lower[close[0]]!r}?" if close else ""


def text_value(
    where: str,
    table: dict[str, Any],
    key: str,
    default: str | None,
    problems: list[str],
    *,
    blank: bool = False,
) -> str | None:
    """`table[key]` (or `default`) when it is a string, not blank unless `blank`; else None,
    with the problem said (a number or a list is not converted)."""
    value: object = table.get(key, default)
    if value is None:
        return None
    if isinstance(value, str) and (blank or value.strip()):
        return value
    problems.append(f"{where}.{key}: must be a {'' if blank else 'non-empty '}string")
    return None
