"""Checks that everything the lab needs is installed, naming exactly what is missing and the fix."""

import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from dvsan_lab.errors import PreflightError

# Tools the machine runs, and tools the guests run from the machine's root filesystem (shared
# read-only over 9p): (command, Debian package).
MACHINE_TOOLS = (
    ("ip", "iproute2"),
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("sfdisk", "fdisk"),
    ("busybox", "busybox-static"),  # virtme-ng builds the guests' initramfs with it
)
GUEST_TOOLS = (
    ("iscsiadm", "open-iscsi"),
    ("iscsid", "open-iscsi"),
    ("modprobe", "kmod"),
    ("setsid", "util-linux"),
)
# Modules the guest init loads; their presence tells a kernel with a usable /lib/modules tree.
REQUIRED_MODULE = "kernel/drivers/target/iscsi/iscsi_target_mod.ko"


@dataclass(frozen=True)
class Problem:
    """One missing thing and how to get it."""

    what: str
    fix: str

    def __str__(self) -> str:
        return f"{self.what} ({self.fix})"


def _sbin_path() -> str:
    # NOTE: a non-root login shell's PATH often lacks the sbin dirs where ip/sfdisk/iscsiadm live.
    extra = ["/usr/local/sbin", "/usr/sbin", "/sbin"]
    return os.pathsep.join([os.environ.get("PATH", ""), *extra])


def _kernel_version(vmlinuz: Path) -> str:
    return vmlinuz.name.removeprefix("vmlinuz-")


def find_kernel() -> Path | None:
    """Newest /boot/vmlinuz-*-amd64 whose /lib/modules tree has LIO's iSCSI target module."""
    def key(p: Path) -> list[int]:
        return [int(n) for n in re.findall(r"\d+", p.name)]

    for vmlinuz in sorted(Path("/boot").glob("vmlinuz-*-amd64"), key=key, reverse=True):
        mods = Path("/lib/modules", _kernel_version(vmlinuz))
        if any(mods.glob(REQUIRED_MODULE + "*")):
            return vmlinuz
    return None


def vng_search_path(repo: Path) -> str:
    """Where vng may live: the running interpreter's venv, the repo's .venv, then PATH."""
    dirs = [str(Path(sys.executable).parent), str(repo / ".venv" / "bin"), _sbin_path()]
    return os.pathsep.join(dirs)


def find_vng(repo: Path) -> Path | None:
    found = shutil.which("vng", path=vng_search_path(repo))
    return Path(found) if found else None


def check(repo: Path, need_root: bool = True) -> list[Problem]:
    """Everything missing for `up`; an empty list means the lab can boot."""
    problems: list[Problem] = []
    if need_root and os.geteuid() != 0:
        problems.append(Problem("root privileges", "network namespaces and taps need root: run as root"))
    if not Path("/dev/net/tun").exists():
        problems.append(Problem("/dev/net/tun", "the machine's kernel needs the tun driver for tap devices"))
    for tool, package in MACHINE_TOOLS + GUEST_TOOLS:
        if not shutil.which(tool, path=_sbin_path()):
            problems.append(Problem(tool, f"Debian package {package}"))
    if find_vng(repo) is None:
        problems.append(Problem("vng", f"pip package virtme-ng, the [lab] extra, in {repo / '.venv'}"))
    if find_kernel() is None:
        problems.append(Problem(
            "/boot/vmlinuz-*-amd64 with /lib/modules/<version>/" + REQUIRED_MODULE,
            "Debian package linux-image-amd64",
        ))
    if not Path("/usr/bin/python3").exists():
        problems.append(Problem("/usr/bin/python3", "Debian package python3 (the guests' interpreter)"))
    if not (repo / ".venv" / "bin" / "python").exists():
        problems.append(Problem(
            f"{repo / '.venv'}", "the project's virtualenv, which the guests use over the shared root",
        ))
    return problems


def require(repo: Path, need_root: bool = True) -> None:
    """Raise PreflightError listing every missing piece; never installs anything."""
    problems = check(repo, need_root)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise PreflightError(
            f"the dvsan lab cannot boot; missing:\n{lines}\n"
            f"Install them with: {repo / 'scripts' / 'install-deps.sh'} (as root)"
        )
