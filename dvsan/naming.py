"""Names: unit names, the IQN scheme of exported volumes, initiator names.

Target IQN scheme (documented in docs/architecture.md):
    iqn.2026-11.org.dvsan:<unit>:<device>      e.g. iqn.2026-11.org.dvsan:unit-a:vda2
One target per exported volume, one TPG (tag 1), LUN 0. The LIO backstore is named
``dvsan_<device>``. A unit agent only ever touches targets under its own prefix.
"""

import re
import uuid

from dvsan.errors import InvalidInput

IQN_PREFIX = "iqn.2026-11.org.dvsan"
BACKSTORE_PREFIX = "dvsan_"
NAME_RE = _NAME_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")
_DEVICE_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
# RFC 3720 iqn. names and RFC 3721 eui. names, lower case as LIO stores them. The suffix is anything
# but whitespace, spelt out: the REST schema carries this pattern, and `\s` means other characters in
# JSON Schema (ECMA-262), in pydantic (Rust) and in Python (the fuzzer found U+0085 and U+001C apart).
_WHITESPACE = r"\t-\r \x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"   # str.isspace()
IQN_RE = _IQN_RE = re.compile(
    rf"^(iqn\.[0-9]{{4}}-[0-9]{{2}}\.[a-z0-9.-]+(:[^{_WHITESPACE}]+)?|eui\.[0-9a-f]{{16}})$")


def check_unit_name(name: str) -> str:
    """A unit or host name: lower-case letters, digits, '-' and '.', 1-63 characters."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidInput(
            f"invalid name {name!r}: use 1-63 lower-case letters, digits, '-' or '.', starting with a letter or digit"
        )
    return name


def check_device(device: str) -> str:
    """A kernel block device name such as 'vda2' or 'sdb1' (no path)."""
    if not isinstance(device, str) or not _DEVICE_RE.fullmatch(device):
        raise InvalidInput(f"invalid block device name {device!r}")
    return device


def check_iqn(iqn: str) -> str:
    """An iSCSI qualified name (iqn.YYYY-MM.reversed.domain[:suffix] or eui.<16 hex>)."""
    if not isinstance(iqn, str) or len(iqn) > 223 or not _IQN_RE.fullmatch(iqn):
        raise InvalidInput(f"invalid iSCSI name {iqn!r}: expected iqn.YYYY-MM.domain[:id] in lower case")
    return iqn


def target_iqn(unit: str, device: str) -> str:
    """The target IQN under which `unit` exports its partition `device`."""
    return f"{IQN_PREFIX}:{check_unit_name(unit)}:{check_device(device)}"


def unit_target_prefix(unit: str) -> str:
    """Every target a unit owns starts with this prefix."""
    return f"{IQN_PREFIX}:{check_unit_name(unit)}:"


def backstore_name(device: str) -> str:
    """The LIO block backstore name of a partition."""
    return BACKSTORE_PREFIX + check_device(device)


# NOTE: a fixed namespace, so every station derives the same serial for the same volume identity.
_WWN_NAMESPACE = uuid.UUID("6a1c5f0e-2b7d-4f7e-9d3a-8e0f5c1d2b40")


def volume_wwn(pool_id: str, unit: str, device: str, start_lba: int, length_blocks: int,
               block_size: int, uid: str) -> str:
    """The LUN unit serial of a volume: a UUID derived from its pool, unit, device and extent.

    Stable across re-creations of the export (a host's multipath or by-id link keeps matching)
    and different for any other extent, so a host can tell a repartitioned disk from its volume.
    """
    check_unit_name(unit)
    check_device(device)
    return str(uuid.uuid5(_WWN_NAMESPACE,
                          f"{pool_id}/{unit}/{device}/{start_lba}/{length_blocks}/{block_size}/{uid}"))
