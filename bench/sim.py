"""Shared pieces of the benchmarks: a simulated unit's in-memory LIO and inventory, free ports."""

import socket

from dvsan.model import Export, Partition


class NullLio:
    """Holds nothing: benchmarks measure the protocol and the station, not configfs."""

    def actual_exports(self) -> list[Export]:
        return []

    def apply(self, actions: object) -> None:
        pass


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
