"""Cluster keys and the files that hold them: the strength rule, a private read, an atomic 0600 write.

The rule a cluster key must meet (the station and the unit agent apply the same one):

- at least 16 bytes (MIN_KEY_BYTES);
- at least 8 distinct byte values (MIN_DISTINCT_BYTES): "aaaa..." or "abab..." is refused however
  long it is;
- not a well-known word (WEAK_WORDS), whatever its case.

The key the station makes for itself (64 random hex digits) always meets it.
"""

import os
import stat
from pathlib import Path

from dvsan.errors import InvalidInput

MIN_KEY_BYTES = 16
MIN_DISTINCT_BYTES = 8
WEAK_WORDS = frozenset({"changeme", "secret", "password", "dvsan", "default", "test"})
HOW = ("use at least 16 random characters, for example `openssl rand -hex 32` (or leave the key "
       "unset and the station makes one in its data directory)")


def check_cluster_key(key: bytes) -> bytes:
    """`key` if it meets the rule above; InvalidInput saying which part it fails (never the key)."""
    if len(key) < MIN_KEY_BYTES:
        raise InvalidInput(f"the cluster key is too weak: {len(key)} bytes, fewer than "
                           f"{MIN_KEY_BYTES}; {HOW}")
    distinct = len(set(key))
    if distinct < MIN_DISTINCT_BYTES:
        raise InvalidInput(f"the cluster key is too weak: only {distinct} distinct characters, fewer "
                           f"than {MIN_DISTINCT_BYTES}; {HOW}")
    if key.decode(errors="replace").lower() in WEAK_WORDS:
        raise InvalidInput(f"the cluster key is too weak: it is a well-known word; {HOW}")
    return key


def read_secret_file(path: Path) -> str:
    """The text of a secret file, refused if group or others may read or write it."""
    try:
        st = os.stat(path)
        if st.st_mode & 0o077:
            raise InvalidInput(f"key file {path} is accessible by group or others (mode "
                               f"{stat.S_IMODE(st.st_mode):04o}): chmod 600 it, and consider the "
                               "key exposed")
        return path.read_text()
    except OSError as e:
        raise InvalidInput(f"cannot read key file {path}: {e.strerror}") from e


def write_secret_file(path: Path, text: str) -> None:
    """Atomic write of a secret, mode 0600: a stale temp file removed, the new one opened
    exclusively, fsynced, renamed over `path`, and the directory fsynced."""
    tmp = path.with_name(f".{path.name}.tmp")
    # NOTE: a temp file left by a crash may have any mode, and O_CREAT keeps an existing file's.
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)          # whatever the umask
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def cli_secret_refused(option: str, file_option: str, env: str) -> str:
    """The message for a secret given as a command-line value (visible in /proc/PID/cmdline)."""
    return (f"{option} takes no secret on the command line, where every local user can read it "
            f"(/proc/PID/cmdline, ps): put it in a file of mode 0600 and give {file_option} FILE, "
            f"or set {env}")


def read_secret_lines(path: Path) -> list[str]:
    """The secrets in a 0600 file, one per line (blank lines and '#' comments skipped)."""
    lines = [ln.strip() for ln in read_secret_file(path).splitlines()]
    out = [ln for ln in lines if ln and not ln.startswith("#")]
    if not out:
        raise InvalidInput(f"secret file {path} holds no secret")
    return out
