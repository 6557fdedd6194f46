"""Errors of the guest lab harness, part of dvsan's one DvsanError hierarchy."""

from dvsan.errors import DvsanError


class LabError(DvsanError):
    """The lab could not do what was asked (boot, tear down, unknown guest, busy state dir)."""


class PreflightError(LabError):
    """A tool or package the lab needs is missing; the message names each one and the fix."""


class ExecChannelError(LabError):
    """The exec channel to a guest failed (no answer, broken reply): the guest may be down."""


class CommandFailed(LabError):
    """A command run in a guest with check=True exited non-zero."""

    def __init__(self, guest: str, cmd: str, rc: int, out: str, err: str):
        self.guest, self.cmd, self.rc, self.out, self.err = guest, cmd, rc, out, err
        tail = (err.strip() or out.strip())[-2000:]
        super().__init__(f"[{guest}] `{cmd}` exited {rc}" + (f":\n{tail}" if tail else ""))
