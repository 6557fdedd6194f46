"""A storage report that lists one device twice is refused whole, with a clear error, over the real
signed protocol (station/listeners/autoconf.py `_storage_info`; issue 18 hole 6)."""

import dataclasses
from typing import Any

import pytest

from dvsan.protocol import MsgType
from tests.component.test_station_autoconf import PARTS, UnitHarness, online, request, volumes


def report(u: UnitHarness, station: Any, partitions: list[dict[str, Any]]) -> dict[str, Any]:
    async def send() -> dict[str, Any]:
        assert u.agent.endpoint is not None
        return await u.agent.endpoint.send(("127.0.0.1", station.udp_port), MsgType.STORAGE_INFO,
                                           {"unit": "unit-z", "partitions": partitions})
    return u.call(send())  # type: ignore[no-any-return]


twice = {
    # the same partition listed twice, word for word
    "same-entry": [PARTS[0].to_wire(), PARTS[1].to_wire(), PARTS[0].to_wire()],
    # one device name over two extents: which one would the station believe?
    "two-extents": [PARTS[0].to_wire(), PARTS[1].to_wire(),
                    dataclasses.replace(PARTS[2], device=PARTS[0].device).to_wire()],
    # a device the pool does not know yet, twice
    "new-device": [*(p.to_wire() for p in PARTS),
                   dataclasses.replace(PARTS[2], device="vdz7").to_wire(),
                   dataclasses.replace(PARTS[2], device="vdz7").to_wire()],
}


@pytest.mark.parametrize("case", list(twice))
def test_ep_storage_info_listing_a_device_twice_is_refused_and_changes_nothing(station, case):
    u = UnitHarness(station)
    try:
        u.start()
        online(station, 3)
        a = request(station, "1GiB").json()
        before = volumes(station)
        ack = report(u, station, twice[case])
        assert ack["status"] == "error", ack
        assert ack["error"] == "storage info lists a device twice", ack
        assert volumes(station) == before                         # nothing added, moved or lost
        kept = station.get(f"/api/v1/assignments/{a['id']}").json()
        assert (kept["device"], kept["volume_state"]) == (a["device"], "online")
        assert a["target_iqn"] in u.lio.exports
        # the same unit's next, well-formed report is taken as usual
        ack = report(u, station, [p.to_wire() for p in PARTS])
        assert (ack["status"], ack["online"], ack["added"]) == ("ok", 3, 0)
    finally:
        u.close()
