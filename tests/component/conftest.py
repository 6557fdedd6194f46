"""Component fixtures: a real station process on loopback with a real SQLite file."""

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class StationProc:
    data_dir: Path
    api_port: int
    udp_port: int
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    extra_args: tuple[str, ...] = ()
    ca_file: Path | None = None        # set: the station serves TLS, verified against this CA

    @property
    def url(self) -> str:
        return f"{'https' if self.ca_file else 'http'}://127.0.0.1:{self.api_port}"

    @property
    def key(self) -> bytes:
        return (self.data_dir / "cluster.key").read_text().strip().encode()

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """What httpx verifies this station's certificate with (True: plain HTTP anyway)."""
        return ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file else True

    @property
    def token(self) -> str:
        """The test admin's API token (made before the station first starts)."""
        return (self.data_dir / "admin.token").read_text().strip()

    @property
    def auth(self) -> dict[str, str]:
        """Headers of the test admin."""
        return {"Authorization": f"Bearer {self.token}"}

    def admin_command(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`dvsan-station --data-dir D COMMAND ...` (create-user, create-token, enrol-host)."""
        return subprocess.run([sys.executable, "-m", "station.cli", "--data-dir", str(self.data_dir),
                               "--log-level", "warning", *args], check=False, capture_output=True, text=True, timeout=60)

    def bootstrap(self) -> None:
        """The first admin and its token, as an operator makes them: through the station's CLI."""
        pw = self.data_dir / "admin.password"
        fd = os.open(pw, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, b"test-admin-password-0\n")
        os.close(fd)
        for cmd in (("create-user", "admin", "--role", "admin", "--password-file", str(pw)),
                    ("create-token", "admin", "--token-file", str(self.data_dir / "admin.token"))):
            r = self.admin_command(*cmd)
            if r.returncode != 0:
                raise RuntimeError(f"dvsan-station {cmd[0]} failed: {r.stdout}{r.stderr}")

    def start(self) -> None:
        self.log = self.data_dir / "station.log"
        if not (self.data_dir / "admin.token").exists():
            self.bootstrap()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "station.cli", "--data-dir", str(self.data_dir),
             "--api-host", "127.0.0.1", "--api-port", str(self.api_port),
             "--udp-host", "127.0.0.1", "--udp-port", str(self.udp_port),
             "--enrolment", "first-come", *self.extra_args],
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115 (the child owns it)
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"station exited: {self.log.read_text()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1, verify=self.verify).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("station did not come up in 30 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10, headers=self.auth, verify=self.verify)


@pytest.fixture
def station(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[StationProc]:
    """A fresh station; `@pytest.mark.station_args(...)` adds command-line options."""
    marker = request.node.get_closest_marker("station_args")
    st = StationProc(tmp_path / "station", free_port(), free_port(socket.SOCK_DGRAM),
                     extra_args=tuple(marker.args) if marker else ())
    st.data_dir.mkdir()
    st.start()
    yield st
    st.stop()


# The console's browser tests drive Debian's chromium (scripts/install-deps.sh installs it);
# Playwright never downloads a browser of its own here.
# NOTE: Playwright's sync API leaves its event loop set as running in the thread until it stops,
# so a later test's asyncio.run() would fail: it is started and stopped once per test module
# (not for the whole session, as pytest-playwright's fixtures do).
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser() -> Iterator["Browser"]:
    from playwright.sync_api import sync_playwright

    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install-deps.sh (Debian package chromium)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def context(browser: "Browser") -> Iterator["BrowserContext"]:
    ctx = browser.new_context()
    yield ctx
    ctx.close()


@pytest.fixture
def page(context: "BrowserContext") -> "Page":
    return context.new_page()
