"""What can go wrong in dvsan-shell, each kind with the exit code a script sees."""

from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1         # the station refused, or the task failed (the message says why)
EXIT_USAGE = 2          # a bad flag, path, parameter or value, refused before anything was sent
EXIT_UNREACHABLE = 3    # the station did not answer (down, wrong address, TLS, timeout)
EXIT_LOGIN = 4          # no usable login: no file, unsafe file, expired or revoked token


def error_line(e: BaseException) -> str:
    """An error as the one line the shell prints: its message, first letter lower-cased
    (configshell's messages start upper-case) unless it opens with an acronym."""
    text = str(e).strip() or type(e).__name__
    return text[0].lower() + text[1:] if text[:1].isupper() and not text[:2].isupper() else text


class ShellError(Exception):
    """An error the shell shows as one line (never a traceback), with its exit code."""

    exit_code = EXIT_FAILED


class UsageError(ShellError):
    """Bad input from the operator: nothing was sent to the station."""

    exit_code = EXIT_USAGE


class Unreachable(ShellError):
    """The station cannot be reached: refused connection, no route, TLS failure, timeout."""

    exit_code = EXIT_UNREACHABLE


class LoginNeeded(ShellError):
    """No usable credentials: `dvsan-shell login` first."""

    exit_code = EXIT_LOGIN


class Refused(ShellError):
    """The station answered with an error: its own message, and its HTTP status."""

    def __init__(self, status: int, detail: str, kind: str | None = None) -> None:
        self.status, self.detail, self.kind = status, detail, kind
        super().__init__(f"refused ({status}{' ' + kind if kind else ''}): {detail}")


class TaskFailed(ShellError):
    """A task the shell followed ended without success (failed, cancelled, interrupted)."""

    def __init__(self, task: dict[str, Any]) -> None:
        self.task = task
        why = task.get("error") or task.get("message") or ""
        kind = task.get("error_kind")
        super().__init__(f"task {task['id']} ({task['kind']} {task['object']}) {task['state']}"
                         f"{' (' + kind + ')' if kind else ''}: {why}")
