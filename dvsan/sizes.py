"""Parsing and formatting of storage sizes ("1GiB", "80 GB", "512M", "1073741824")."""

import re
from fractions import Fraction

from dvsan.errors import InvalidInput

_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kib": 1024, "kb": 1000,
    "m": 1024**2, "mib": 1024**2, "mb": 1000**2,
    "g": 1024**3, "gib": 1024**3, "gb": 1000**3,
    "t": 1024**4, "tib": 1024**4, "tb": 1000**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int) -> int:
    """Bytes for a size: a whole number of bytes, or a number with K/M/G/T (binary), KiB.. or KB.. (decimal)."""
    if isinstance(text, bool):
        raise InvalidInput(f"not a size: {text!r}")
    if isinstance(text, int):
        value = text
    elif not isinstance(text, str):
        raise InvalidInput(f"not a size: {text!r} (expected a string such as '80GiB' or a whole number of bytes)")
    else:
        m = _SIZE_RE.fullmatch(text)
        if not m or m.group(2).lower() not in _UNITS:
            raise InvalidInput(
                f"not a size: {text!r} (use bytes or a number with K, M, G, T, KiB..TiB or KB..TB)"
            )
        # NOTE: Fraction, not float: float overflows on long inputs and rounds byte counts above 2**53.
        value = int(Fraction(m.group(1)) * _UNITS[m.group(2).lower()])
    if value <= 0:
        raise InvalidInput(f"a size must be positive, got {text!r}")
    return value


def format_size(n: int) -> str:
    """A size in binary units for people: 1073741824 -> '1.0 GiB'."""
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{n} B"
