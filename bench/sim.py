"""Shared pieces of the benchmarks: a simulated unit's in-memory LIO and inventory, free ports."""

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from dvsan.model import Export, Partition


class NullLio:
    """Holds nothing: benchmarks measure the protocol and the station, not configfs."""

    def actual_exports(self) -> list[Export]:
        return []

    def apply(self, actions: object) -> None:
        pass

    def sessions(self, target_iqn: str) -> int:
        return 0


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parts() -> list[Partition]:
    """Three partitions of 512 MiB, 1280 MiB and 2 GiB on disk sdb, as a unit would report them."""
    out, start = [], 2048
    for i, mib in enumerate((512, 1280, 2048), 1):
        n = mib * 2048
        out.append(Partition(device=f"sdb{i}", disk="sdb", number=i, start_lba=start, length_blocks=n,
                             end_lba=start + n - 1, block_size=512, size_bytes=n * 512))
        start += n
    return out


def auth(data_dir: str) -> dict[str, str]:
    """The benchmark admin's headers (its token made by station() before the station starts)."""
    return {"Authorization": f"Bearer {(Path(data_dir) / 'admin.token').read_text().strip()}"}


def _bootstrap(data_dir: str) -> None:
    pw = Path(data_dir) / "admin.password"
    pw.write_text("bench-admin-password-0\n")
    pw.chmod(0o600)
    for cmd in (["create-user", "admin", "--role", "admin", "--password-file", str(pw)],
                ["create-token", "admin", "--token-file", str(Path(data_dir) / "admin.token")]):
        subprocess.run([sys.executable, "-m", "station.cli", "--data-dir", data_dir, "--log-level", "warning",
                        *cmd], check=True, capture_output=True, cwd=Path(__file__).resolve().parents[1])


@contextmanager
def station(data_dir: str, *extra_args: str) -> Iterator[tuple[str, int, bytes]]:
    """A real `dvsan-station` on loopback for the length of the block: (REST URL, UDP port, cluster key).

    REST calls need `auth(data_dir)` as headers."""
    _bootstrap(data_dir)
    api, udp = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
    with open(Path(data_dir) / "station.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "station.cli", "--data-dir", data_dir, "--api-host", "127.0.0.1",
             "--api-port", str(api), "--udp-host", "127.0.0.1", "--udp-port", str(udp),
             "--log-level", "warning", "--enrolment", "first-come", *extra_args],
            stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[1])
        url = f"http://127.0.0.1:{api}"
        try:
            for _ in range(300):
                if proc.poll() is not None:
                    raise RuntimeError(f"the station exited; see {log.name}")
                try:
                    if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            yield url, udp, (Path(data_dir) / "cluster.key").read_text().strip().encode()
        finally:
            proc.terminate()
            proc.wait(10)
