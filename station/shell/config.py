"""The login file of dvsan-shell (`~/.config/dvsan/shell.json`, or $DVSAN_SHELL_CONFIG): the
station's URL, the user, the API token and its expiry; mode 0600, refused if anyone else may read it."""

import json
import os
import stat
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from dvsan.keyfiles import write_secret_file
from station.shell.errors import LoginNeeded

ENV = "DVSAN_SHELL_CONFIG"


def default_path() -> Path:
    """$DVSAN_SHELL_CONFIG, else $XDG_CONFIG_HOME/dvsan/shell.json (~/.config by default)."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "dvsan" / "shell.json"


@dataclass(frozen=True)
class Login:
    """What `dvsan-shell login` keeps: where the station is and the token to show it."""

    station: str
    user: str
    token: str
    token_id: int | None = None
    expires_at: str | None = None        # RFC 3339, as the station answered it; None: until revoked
    ca_file: str | None = None           # the CA the station's TLS certificate is checked against

    def expired(self, now: datetime | None = None) -> bool:
        if not self.expires_at:
            return False
        try:
            at = datetime.fromisoformat(self.expires_at)
        except ValueError:
            return False                 # the station will judge it
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        return at <= (now or datetime.now(UTC))


def save(path: Path, login: Login) -> None:
    """Write the login file atomically, mode 0600, in a directory only its owner may enter."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_secret_file(path, json.dumps(asdict(login), indent=2) + "\n")


def load(path: Path, strict: bool = True) -> Login:
    """The login in `path`; LoginNeeded saying what to do if it is missing, unsafe or unusable.
    `strict=False` (logout only) reads a file others may access, to revoke its token."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise LoginNeeded(f"not logged in ({path} does not exist): run `dvsan-shell login "
                          "--station URL --user NAME` first") from None
    except OSError as e:
        raise LoginNeeded(f"cannot read {path}: {e.strerror}") from e
    if strict and st.st_mode & 0o077:
        raise LoginNeeded(f"{path} holds an API token but group or others may access it (mode "
                          f"{stat.S_IMODE(st.st_mode):04o}): refusing to use it. Consider the token "
                          f"exposed: run `dvsan-shell logout`, then log in again (the file is written 0600)")
    if strict and st.st_uid != os.getuid():
        raise LoginNeeded(f"{path} belongs to another user (uid {st.st_uid}): refusing to use its token")
    try:
        raw = json.loads(path.read_text())
        login = Login(station=str(raw["station"]), user=str(raw["user"]), token=str(raw["token"]),
                      token_id=raw.get("token_id"), expires_at=raw.get("expires_at"),
                      ca_file=raw.get("ca_file"))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LoginNeeded(f"{path} is not a dvsan-shell login file ({type(e).__name__}: {e}): run "
                          "`dvsan-shell login` again") from None
    if not login.token or not login.station.startswith(("http://", "https://")):
        raise LoginNeeded(f"{path} is not a dvsan-shell login file (no token or station URL): run "
                          "`dvsan-shell login` again")
    return login


def remove(path: Path) -> bool:
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False
