"""An inventory of several hundred partitions crosses the wire (many fragments) intact."""

from dvsan.model import Partition
from dvsan.protocol import MAX_PAYLOAD
from tests.component.test_station_autoconf import UnitHarness, online, volumes


def many(n: int) -> list[Partition]:
    out, start = [], 2048
    for i in range(1, n + 1):
        length = 2048 * (1 + i % 7)            # 1-7 MiB, varied
        out.append(Partition(device=f"sdb{i}", disk="sdb", number=i, start_lba=start, length_blocks=length,
                             end_lba=start + length - 1, block_size=512, size_bytes=length * 512))
        start += length
    return out


def test_gp_six_hundred_partitions_arrive_intact(station):
    parts = many(600)
    wire = sum(len(str(p.to_wire())) for p in parts)
    assert wire > 50 * MAX_PAYLOAD                # really many fragments
    u = UnitHarness(station, parts=parts)
    try:
        u.start()
        vols = online(station, 600)
        got = {v["device"]: (v["number"], v["start_lba"], v["length_blocks"], v["end_lba"], v["size_bytes"])
               for v in vols}
        assert got == {p.device: (p.number, p.start_lba, p.length_blocks, p.end_lba, p.size_bytes) for p in parts}
        assert station.get("/api/v1/protocol/stats").json().get("dropped", 0) == 0
        # a second report drops 100 of them: those become 'missing', the rest stay online
        u.parts = parts[:500]
        u.call(u.agent.send_storage_info(("127.0.0.1", station.udp_port)))
        states = {v["device"]: v["state"] for v in volumes(station)}
        assert sum(s == "online" for s in states.values()) == 500
        assert {d for d, s in states.items() if s == "missing"} == {p.device for p in parts[500:]}
    finally:
        u.close()
