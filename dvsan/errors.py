"""The one exception hierarchy of dvsan; the station maps it to HTTP status codes in one place."""


class DvsanError(Exception):
    """Base of every error dvsan raises on purpose."""


class InvalidInput(DvsanError):
    """A user or a peer sent something malformed (HTTP 422)."""


class NotFound(DvsanError):
    """The named object does not exist (HTTP 404)."""


class Unauthenticated(DvsanError):
    """No credentials, or credentials the station does not take (HTTP 401)."""


class Forbidden(DvsanError):
    """Authenticated, but not allowed this (HTTP 403); the message names the missing permission."""


class Conflict(DvsanError):
    """The request cannot be met in the current state (HTTP 409)."""


class InsufficientCapacity(Conflict):
    """No free, online volume is large enough for a request."""

    def __init__(self, requested: int, largest_free: int | None, where: str | None = None):
        from dvsan.sizes import format_size

        self.requested = requested
        self.largest_free = largest_free
        if largest_free is None:
            msg = f"no free volume in the pool for a request of {format_size(requested)}: the pool has no free online volume"
        else:
            want, have = format_size(requested), format_size(largest_free)
            if want == have:  # rounding would hide the difference: say the bytes
                want, have = f"{want} ({requested} bytes)", f"{have} ({largest_free} bytes)"
            msg = (
                f"no free volume of at least {want}: "
                f"the largest free volume is {have} ({where})"
            )
        super().__init__(msg)


class InsufficientPair(Conflict):
    """No two units each have a free volume large enough for a mirror's request."""

    def __init__(self, requested: int, largest_free: dict[str, int]):
        from dvsan.sizes import format_size

        self.requested = requested
        self.largest_free = dict(largest_free)
        free = ", ".join(f"{u}: largest {format_size(n)} ({n} bytes)" for u, n in sorted(largest_free.items()))
        super().__init__(f"no two units each have a free volume of at least {format_size(requested)} "
                         f"({requested} bytes): a mirror needs one on each of two different units; "
                         f"free: {free or 'nothing (no free online volume in the pool)'}")


class Unavailable(DvsanError):
    """A peer that must take part did not answer in time (HTTP 503)."""


class ProtocolError(DvsanError):
    """A datagram failed to decode or authenticate; it is dropped and counted."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


class AdapterError(DvsanError):
    """A kernel-facing adapter (LIO, iscsiadm, sysfs) failed."""


class DiscoveryError(Unavailable):
    """Finding a peer by DNS failed; `reason` says how, the message says it to an operator.

    Reasons: 'no-record' (NXDOMAIN or no record of that type), 'no-answer' (the DNS server did
    not answer in time), 'dns-failed' (it answered with an error such as SERVFAIL or REFUSED),
    'no-address' (a name that resolves nowhere), 'not-available' (an SRV target of '.'),
    'no-config' (no DNS server configured), 'unreachable' (names found, but no station answered).
    """

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


class IdentityRefused(DvsanError):
    """A signed message was refused for who sent it: unsigned, unknown, pending, revoked, another
    machine's key, a bad signature, misaddressed or replayed. `reason` names which, for counters."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)
