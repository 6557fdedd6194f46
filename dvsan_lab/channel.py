"""Client side of the guests' exec channel (the server is dvsan_lab/guest/gexec.py)."""

import errno
import json
import socket
from collections.abc import Mapping
from typing import Any, NamedTuple

from dvsan_lab.errors import CommandFailed, ExecChannelError

PROTOCOL_VERSION = 1
# NOTE: the guest sits on a local bridge, but under TCG a busy guest can take seconds to accept.
CONNECT_TIMEOUT = 10.0
# Extra time on top of a command's own timeout for the guest to kill it and answer.
REPLY_MARGIN = 30.0


class Result(NamedTuple):
    """What a command in a guest did: exit code, stdout, stderr (unpacks as rc, out, err)."""

    rc: int
    out: str
    err: str

    @property
    def ok(self) -> bool:
        return self.rc == 0


class ExecChannel:
    """Talks to one guest's exec server; every call is one short TCP connection."""

    def __init__(self, guest: str, ip: str, port: int, source: str, log_hint: str = ""):
        self.guest, self.ip, self.port, self.source = guest, ip, port, source
        self._hint = log_hint

    def _call(self, request: Mapping[str, Any], timeout: float, connect_timeout: float) -> dict[str, Any]:
        where = f"{self.guest} ({self.ip}:{self.port})"
        try:
            # NOTE: bound to the machine's lab address: when the lab network is down the bind
            # fails here, instead of the connection leaving through the default route.
            with socket.create_connection(
                (self.ip, self.port), timeout=connect_timeout, source_address=(self.source, 0)
            ) as s:
                s.settimeout(timeout)
                s.sendall((json.dumps({"v": PROTOCOL_VERSION, **request}) + "\n").encode())
                with s.makefile("rb") as f:
                    line = f.readline()
        except OSError as e:
            if e.errno == errno.EADDRNOTAVAIL:
                raise ExecChannelError(
                    f"exec channel to {where}: the lab network is down ({self.source} is not an "
                    "address of this machine); run `dvsan-lab up`"
                ) from e
            hint = f"; is the lab up? guest log: {self._hint}" if self._hint else ""
            raise ExecChannelError(f"exec channel to {where} failed: {e}{hint}") from e
        if not line:
            raise ExecChannelError(f"exec channel to {where} closed without an answer")
        try:
            reply: dict[str, Any] = json.loads(line)
        except ValueError as e:
            raise ExecChannelError(f"exec channel to {where} sent garbage: {line[:200]!r}") from e
        if not reply.get("ok"):
            raise ExecChannelError(f"exec server in {where} refused: {reply.get('error')}")
        return reply

    def ping(self, timeout: float = 5.0) -> dict[str, Any]:
        """Hostname and uptime of the guest; raises ExecChannelError if it does not answer."""
        return self._call({"op": "ping"}, timeout=timeout, connect_timeout=timeout)

    def exec(
        self,
        cmd: str,
        timeout: float = 120.0,
        *,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        check: bool = False,
    ) -> Result:
        """Run `cmd` with bash -c in the guest as root; rc 124 means it timed out and was killed."""
        reply = self._call(
            {"op": "exec", "cmd": cmd, "timeout": timeout, "input": input,
             "env": dict(env or {}), "cwd": cwd},
            timeout=timeout + REPLY_MARGIN,
            connect_timeout=CONNECT_TIMEOUT,
        )
        result = Result(int(reply["rc"]), reply["out"], reply["err"])
        if check and not result.ok:
            raise CommandFailed(self.guest, cmd, result.rc, result.out, result.err)
        return result

    def spawn(
        self, cmd: str, log: str, *, env: Mapping[str, str] | None = None, cwd: str | None = None
    ) -> int:
        """Start `cmd` detached in its own session with output appended to `log`; its guest PID."""
        reply = self._call(
            {"op": "spawn", "cmd": cmd, "log": log, "env": dict(env or {}), "cwd": cwd},
            timeout=CONNECT_TIMEOUT + REPLY_MARGIN,
            connect_timeout=CONNECT_TIMEOUT,
        )
        return int(reply["pid"])

    def shutdown(self, timeout: float = 5.0) -> None:
        """Ask the exec server to exit, which powers the guest off."""
        self._call({"op": "shutdown"}, timeout=timeout, connect_timeout=timeout)
