"""dvsan-shell: log in to a station, then run its admin shell interactively, one command at a
time (`dvsan-shell /units ls`), or a script of commands from a pipe.

Exit codes: 0 done; 1 the station refused or a task failed; 2 bad usage (flag, path, parameter,
value); 3 the station cannot be reached; 4 no usable login (run `dvsan-shell login`).
"""

import argparse
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from station.shell import config
from station.shell.client import Client
from station.shell.errors import (
    EXIT_OK,
    LoginNeeded,
    ShellError,
    Unreachable,
    UsageError,
    error_line,
)

EPILOG = """\
examples:
  dvsan-shell login --station https://station.example.org:7480 --user alice --ca-file ca.pem
  dvsan-shell                                  the interactive shell (TAB completes, `help`)
  dvsan-shell /units ls                        one command, then exit (non-zero on failure)
  dvsan-shell /volumes/17 info --json          JSON on stdout
  dvsan-shell /hosts/host-b assign 80GiB address=10.0.0.21
  dvsan-shell < commands.txt                   a script: one command a line, stops at an error
  dvsan-shell logout                           revoke the token and forget it

exit codes: 0 done, 1 refused or failed, 2 bad usage, 3 station unreachable, 4 not logged in
"""


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < v <= 86400:
        raise argparse.ArgumentTypeError(f"seconds between 0 and 86400, got {text!r}")
    return v


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help=f"the login file (default: ${config.ENV}, else ~/.config/dvsan/shell.json)")
    p.add_argument("--timeout", type=_positive, default=10.0, metavar="SECONDS",
                   help="how long to wait for each answer of the station (default 10)")
    p.add_argument("--ca-file", default=None, metavar="PEM",
                   help="check the station's TLS certificate against this CA (https:// stations)")


def _client(station: str, token: str | None, timeout: float, ca_file: str | None) -> Client:
    try:
        return Client(station, token, timeout=timeout, ca_file=ca_file)
    except OSError as e:
        raise UsageError(f"--ca-file {ca_file}: {e.strerror or e}") from None
    except ValueError as e:       # ssl: a file that holds no certificate
        raise UsageError(f"--ca-file {ca_file}: {e}") from None


def _login(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="dvsan-shell login", description=(
        "Log in to a station with your name and password; the token the station answers is kept "
        "in the login file (mode 0600) for the shell's next runs."))
    _common(p)
    p.add_argument("--station", required=True, metavar="URL", help="e.g. http://station:7480")
    p.add_argument("--user", required=True, metavar="NAME")
    p.add_argument("--password-file", metavar="FILE",
                   help="read the password from this file's first line (mode 0600); else it is asked")
    p.add_argument("--days", type=int, default=None, metavar="N",
                   help="keep a token valid N days (1-3650) instead of the login's 12 hours")
    a = p.parse_args(argv)
    if not a.station.startswith(("http://", "https://")):
        raise UsageError(f"--station {a.station!r}: give a URL, http://HOST:7480 or https://HOST:7480")
    if a.days is not None and not 1 <= a.days <= 3650:
        raise UsageError(f"--days {a.days}: between 1 and 3650")
    ca_file = str(Path(a.ca_file).resolve()) if a.ca_file else None
    from station.shell.tree import read_password  # the tree only when it is needed
    password = read_password(a.password_file)
    path = a.config or config.default_path()
    c = _client(a.station, None, a.timeout, ca_file)
    try:
        r = c.send("POST", "/api/v1/login", json={"name": a.user, "password": password})
        if r.status_code in (401, 403):
            detail = r.json().get("detail", r.text) if r.content else r.reason_phrase
            raise LoginNeeded(f"login refused by {c.station}: {detail}")
        if r.status_code >= 400:
            c.raise_for(r)
        t = r.json()
    finally:
        c.close()
    if a.days:
        c = _client(a.station, t["token"], a.timeout, ca_file)
        try:
            short_id = t["id"]
            t = c.call("POST", "/tokens", json={"label": "dvsan-shell", "days": a.days})
            c.call("DELETE", f"/tokens/{short_id}")            # the 12-hour one is not needed
        finally:
            c.close()
    config.save(path, config.Login(station=a.station.rstrip("/"), user=a.user, token=t["token"],
                                   token_id=t["id"], expires_at=t.get("expires_at"), ca_file=ca_file))
    until = f"until {t['expires_at']}" if t.get("expires_at") else "until revoked"
    print(f"logged in to {a.station} as {a.user}; the token ({until}) is in {path} (mode 0600)")
    return EXIT_OK


def _logout(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="dvsan-shell logout", description=(
        "Revoke the stored token at the station and delete the login file."))
    _common(p)
    a = p.parse_args(argv)
    path = a.config or config.default_path()
    login = config.load(path, strict=False)
    if login.token_id is not None:
        c = _client(login.station, login.token, a.timeout, a.ca_file or login.ca_file)
        try:
            c.call("DELETE", f"/tokens/{login.token_id}")
        except LoginNeeded:
            pass                                  # expired or revoked already
        except Unreachable as e:
            print(f"dvsan-shell: warning: {e}; token {login.token_id} stays valid until it expires: "
                  f"revoke it later (DELETE /api/v1/tokens/{login.token_id})", file=sys.stderr)
        finally:
            c.close()
    config.remove(path)
    print(f"logged out of {login.station}: {path} deleted")
    return EXIT_OK


def _run(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="dvsan-shell", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        usage="dvsan-shell [options] [PATH] [COMMAND [PARAMETER...]]\n"
              "       dvsan-shell login --station URL --user NAME [--password-file FILE]\n"
              "       dvsan-shell logout",
        description="The admin shell of a dvsan station: its units, volumes, hosts, tasks, users "
                    "and audit log as a tree, over the station's REST API.")
    _common(p)
    p.add_argument("--json", action="store_true", help="machine-readable output (JSON on stdout)")
    p.add_argument("--task-timeout", type=_positive, default=None, metavar="SECONDS",
                   help="stop following a task after this long (exit 1; the task goes on)")
    p.add_argument("words", nargs="*", metavar="[PATH] COMMAND [PARAMETER...]", help=argparse.SUPPRESS)
    a = p.parse_intermixed_args(argv)
    path = a.config or config.default_path()
    state: dict[str, config.Login] = {}

    def login() -> config.Login:
        if "login" not in state:
            lg = config.load(path)
            if lg.expired():
                raise LoginNeeded(f"the token in {path} expired at {lg.expires_at}: run "
                                  "`dvsan-shell login` again")
            state["login"] = lg
        return state["login"]

    def connect() -> Client:
        lg = login()
        return _client(lg.station, lg.token, a.timeout, a.ca_file or lg.ca_file)

    # NOTE: configshell (and readline) are imported only now: `--help` and bad flags stay instant
    from station.shell.shell import DvsanShell
    from station.shell.tree import Output, Root

    output = Output(json=a.json)
    shell = DvsanShell(output, history=path.with_name("shell_history"))
    def about() -> dict[str, object]:
        lg = login()
        return {"station": lg.station, "user": lg.user, "token_expires_at": lg.expires_at,
                "ca_file": lg.ca_file, "login_file": str(path)}

    root = Root(shell, connect, output, task_timeout=a.task_timeout, about=about)
    try:
        if a.words:
            shell.run_line(" ".join(a.words))
        elif sys.stdin.isatty():
            _interactive(shell, root, login)
        else:
            shell.run_script(sys.stdin)
    finally:
        root.close()
    return EXIT_OK


def _interactive(shell: object, root: object, login: Callable[[], config.Login]) -> None:
    from station.shell.shell import DvsanShell
    from station.shell.tree import Root
    assert isinstance(shell, DvsanShell) and isinstance(root, Root)
    lg = login()
    until = f", token until {lg.expires_at}" if lg.expires_at else ""
    print(f"dvsan-shell: {lg.user} at {lg.station}{until}. `help` for commands, `exit` to leave.")
    try:
        root.client().health()
    except Unreachable as e:
        print(f"warning: {e}; commands will fail until it answers", file=sys.stderr)
    shell.run_interactive()


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if argv is None:
        # NOTE: `dvsan-shell /volumes ls | head` ends quietly, as a C tool killed by SIGPIPE does
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        if args[:1] == ["login"]:
            return _login(args[1:])
        if args[:1] == ["logout"]:
            return _logout(args[1:])
        return _run(args)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except ShellError as e:
        print(f"dvsan-shell: {error_line(e)}", file=sys.stderr)
        return e.exit_code
    except Exception as e:
        if os.environ.get("DVSAN_SHELL_DEBUG"):
            raise
        from station.shell.shell import exit_code
        print(f"dvsan-shell: {error_line(e)}", file=sys.stderr)
        return exit_code(e)


if __name__ == "__main__":
    sys.exit(main())
