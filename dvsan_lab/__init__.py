"""dvsan's lab harness: guests on a stock Debian kernel with real LIO and open-iscsi, under TCG."""

from dvsan_lab.channel import Result
from dvsan_lab.errors import CommandFailed, ExecChannelError, LabError, PreflightError
from dvsan_lab.lab import Lab, LabStatus, UpTimings

__all__ = [
    "CommandFailed", "ExecChannelError", "Lab", "LabError", "LabStatus", "PreflightError",
    "Result", "UpTimings",
]
