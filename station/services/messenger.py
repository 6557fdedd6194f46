"""The port through which station services talk to units: send a signed message, get its ACK.

The UDP listener (station/listeners/autoconf.py) implements it; services never open sockets.
"""

from typing import Any, Protocol

from dvsan.endpoint import Peer
from dvsan.protocol import MsgType


class Messenger(Protocol):
    async def send(self, peer: Peer, mtype: MsgType, body: dict[str, Any], *,
                   timeout: float | None = 10.0) -> dict[str, Any]:
        """Send `body` to `peer` and return the ACK's body; raises Unavailable when none comes."""
        ...
