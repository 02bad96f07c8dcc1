"""JSON as ffsplit writes it: finite numbers only.

Python's ``json`` writes ``NaN`` and ``Infinity`` by default, which no JSON
reader (ffsplit's own included) accepts, so a file holding one is unreadable
afterwards. Everything ffsplit writes goes through ``dumps``: a record that
other verbs read back (the manifest, the embedded copy) refuses a non-finite
number outright (a bug: the value should have been refused as input), and a
report for people and scripts (``--json``, runtime records) writes ``null``
where a measurement was not a number.
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite(data: Any) -> Any:
    """``data`` with every non-finite float replaced by None (containers copied, the rest as is)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite(v) for v in data]
    return data


def dumps(data: Any, *, strict: bool = False, **kwargs: Any) -> str:
    """JSON text with finite numbers only: ``strict`` raises ValueError on a non-finite one, otherwise it
    becomes null."""
    return json.dumps(data if strict else finite(data), allow_nan=False, **kwargs)
