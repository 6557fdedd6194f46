"""Watches the unit's storage interface over netlink (pyroute2) and reports link up/down changes."""

import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

IFF_UP = 0x1
IFF_LOWER_UP = 0x10000    # carrier


def link_is_up(flags: int) -> bool:
    """A link carries traffic when it is administratively up and has carrier."""
    return bool(flags & IFF_UP) and bool(flags & IFF_LOWER_UP)


def transition(previous: bool | None, now: bool) -> str | None:
    """'up' or 'down' when the state changed (or on the first observation of a down link), else None."""
    if previous is None:
        return None if now else "down"
    if previous == now:
        return None
    return "up" if now else "down"


def interface_of(address: str) -> str:
    """The name of the interface that holds `address` (the unit's storage/portal address)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for msg in ipr.get_addr():
            if msg.get_attr("IFA_ADDRESS") == address or msg.get_attr("IFA_LOCAL") == address:
                idx = msg["index"]
                links = ipr.get_links(idx)
                return str(links[0].get_attr("IFLA_IFNAME"))
    raise LookupError(f"no local interface holds {address}")


class LinkWatch:
    """A daemon thread reading RTNL link events; calls `on_change(ifname, 'up'|'down')`."""

    def __init__(self, ifname: str, on_change: Callable[[str, str], None]):
        self.ifname = ifname
        self.on_change = on_change
        self.state: bool | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"linkwatch-{ifname}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _observe(self, msg: Any) -> None:
        if msg.get("event") != "RTM_NEWLINK" or msg.get_attr("IFLA_IFNAME") != self.ifname:
            return
        now = link_is_up(int(msg["flags"]))
        change = transition(self.state, now)
        self.state = now
        if change:
            log.info("storage link %s went %s", self.ifname, change)
            try:
                self.on_change(self.ifname, change)
            except Exception:  # a failing callback must not stop the watch
                log.exception("link %s callback failed", self.ifname)

    def _run(self) -> None:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            ipr.bind()   # RTNLGRP_LINK and friends: the kernel pushes every link change to us
            for link in ipr.get_links():
                if link.get_attr("IFLA_IFNAME") == self.ifname:
                    self.state = link_is_up(int(link["flags"]))
            log.info("watching storage link %s (now %s)", self.ifname, "up" if self.state else "down")
            while not self._stop.is_set():
                for msg in ipr.get():
                    self._observe(msg)
