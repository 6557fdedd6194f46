"""The configshell-fb interpreter of dvsan-shell: one command line at a time, errors as one line.

configshell's own loop lets a failed command end the session (targetcli wraps it in a retry
loop); here a failed command prints its error and the prompt comes back. In one-shot and script
mode the error propagates instead, so that the process exits with the error's code.
"""

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from configshell import ConfigShell, ExecutionError, Log

from station.shell.errors import EXIT_FAILED, EXIT_USAGE, ShellError, UsageError, error_line
from station.shell.tree import Output

PREFS = {
    "color_mode": False,           # plain text: the same on a terminal, in a pipe and in a test
    "loglevel_console": "info",
    "loglevel_file": "debug",
    "logfile": None,               # configshell writes no log file of its own
    "prompt_length": 48,
    "tree_round_nodes": True,
    "tree_status_mode": True,
    "tree_max_depth": 1,
    "tree_show_root": True,
}
JSON_FLAG = "--json"
HISTORY_LINES = 1000


def exit_code(e: BaseException) -> int:
    if isinstance(e, ShellError):
        return e.exit_code
    if isinstance(e, ExecutionError):         # configshell: no such path, command or parameter
        return EXIT_USAGE
    return EXIT_FAILED


class QuietLog(Log):  # type: ignore[misc]
    """configshell's log without the cost of its debug lines: configshell's `debug` walks the
    whole call stack (inspect.stack) for every line, shown or not, a dozen times a command."""

    def debug(self, msg: str) -> None:
        if os.environ.get("DVSAN_SHELL_DEBUG"):
            super().debug(msg)


class DvsanShell(ConfigShell):  # type: ignore[misc]
    """configshell's interpreter with dvsan's defaults, `--json` per command, and errors shown."""

    def __init__(self, output: Output, history: Path | None = None) -> None:
        super().__init__(preferences_dir=None)       # no pickled preferences file
        self.log = QuietLog()
        for k, v in PREFS.items():
            self.prefs[k] = v
        self.prefs["bookmarks"] = self.prefs["bookmarks"] or {}
        self.output = output
        self.history = history
        self.errors = 0
        self.tty = sys.stdin.isatty() and sys.stdout.isatty()
        if self.tty:
            import readline
            # NOTE: configshell's own hook asks the terminal for the cursor position (ESC [6n) and
            # waits for the answer: a terminal that never answers hangs the shell on a TAB. This
            # one prints the matches in columns and redraws the line, asking nothing.
            readline.set_completion_display_matches_hook(self._show_matches)

    def _show_matches(self, substitution: str, matches: Sequence[str], longest: int) -> None:
        import readline
        width = max(longest + 2, 1)
        cols = max(1, self.output.width() // width)
        out = ["\n"]
        for i in range(0, len(matches), cols):
            out.append("".join(m.ljust(width) for m in matches[i:i + cols]).rstrip() + "\n")
        out.append(self._get_prompt() + readline.get_line_buffer())
        sys.stdout.write("".join(out))
        sys.stdout.flush()

    def run_line(self, line: str) -> None:
        """Run one command line; errors propagate (one-shot and script mode). A `--json` word
        anywhere on the line asks for JSON output of this command."""
        words = line.split()
        want_json = JSON_FLAG in words
        if want_json:
            line = " ".join(w for w in words if w != JSON_FLAG)
        bad = [w for w in line.split() if w.startswith("--")]
        if bad:
            raise UsageError(f"unknown option {bad[0]} (options: --json)")
        before = self.output.json
        self.output.json = before or want_json
        try:
            ConfigShell.run_cmdline(self, line)
        finally:
            self.output.json = before

    def run_cmdline(self, cmdline: str) -> None:
        """The interactive loop's entry: run one line, show what went wrong, keep going."""
        try:
            self.run_line(cmdline)
        except KeyboardInterrupt:
            sys.stderr.write("\n")
        except Exception as e:  # noqa: BLE001 - every error is one line; the prompt comes back
            self.errors += 1
            self.output.note(f"error: {error_line(e)}")
            if os.environ.get("DVSAN_SHELL_DEBUG"):
                import traceback
                traceback.print_exc()

    def run_interactive(self) -> None:
        if self.tty and self.history is not None:
            import readline
            readline.set_history_length(HISTORY_LINES)
            try:
                readline.read_history_file(str(self.history))
            except OSError:
                pass
        try:
            super().run_interactive()
        finally:
            if self.tty and self.history is not None:
                import readline
                try:
                    fd = os.open(self.history, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                    os.close(fd)
                    readline.write_history_file(str(self.history))
                except OSError:
                    pass

    def run_script(self, lines: Any) -> None:
        """Commands from a file or a pipe, one a line ('#' comments skipped), from the root; the
        first error stops the run and propagates."""
        for line in lines:
            line = line.strip()
            if line and not line.startswith("#"):
                self.run_line(line)
