"""The Wiper on a real partition of unit-a (issue 6): zeroing by BLKZEROOUT and by O_DIRECT
writes, each rate beside a raw `dd oflag=direct` of the same device; the kernel's refusals
(an LIO export, its exclusive claim, a mount) side by side with the good path."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from test_adapters import clean_unit, run_py  # tests/lab is on sys.path (rootdir conftest)

pytestmark = pytest.mark.lab
UNIT = "unit-a"
DEVICE = "vda1"            # 512 MiB: the smallest partition of unit-a's disk
POOL = "7e57e57e-0000-4000-8000-000000000006"


@pytest.fixture
def clean_lio(lab: Any) -> Iterator[None]:
    clean_unit(lab)
    yield
    clean_unit(lab)


def test_gp_wipe_rates_and_refusals_on_a_real_partition(lab: Any, clean_lio: None) -> None:
    out = run_py(lab, UNIT, f"""
        import asyncio, mmap, subprocess, tempfile
        from dvsan.model import Export
        from unit_agent.agent import UnitAgent
        from unit_agent.inventory import blkid_probe, scan
        from unit_agent.lio import Lio
        from unit_agent.wipe import Wiper, _AgentDevices

        UNIT, PORTAL, POOL, DEV = {UNIT!r}, {lab.ip(UNIT)!r}, {POOL!r}, {DEVICE!r}
        PATH = "/dev/" + DEV
        MiB = 1 << 20
        lio = Lio(UNIT, PORTAL)

        def inventory():
            return scan("/", ["vda"], probe=blkid_probe, offer="all-unmounted").offered

        agent = UnitAgent(UNIT, b"k" * 32, ("127.0.0.1", 9), PORTAL, 3260, lio, inventory)
        w = agent.wiper
        w.sink = None                      # no station here: statuses are read with status()
        part = {{p.device: p for p in inventory()}}[DEV]
        total = part.size_bytes
        spots = (0, total // 2, total - MiB)

        def plant():
            fd = os.open(PATH, os.O_WRONLY)
            for off in spots:
                os.pwrite(fd, b"\\xa5" * MiB, off)
            os.fsync(fd)
            os.close(fd)

        def planted_zero():
            fd = os.open(PATH, os.O_RDONLY | os.O_DIRECT)
            buf = mmap.mmap(-1, MiB)
            try:
                ok = []
                for off in spots:
                    os.preadv(fd, [buf], off)
                    ok.append(buf[:] == bytes(MiB))
                return all(ok)
            finally:
                buf.close()
                os.close(fd)

        def order(wid):
            return {{"unit": UNIT, "pool_id": POOL, "device": DEV, "extent": part.extent.to_wire(),
                    "wipe_id": wid}}

        def export():
            return Export(device=DEV, target_iqn=target_iqn(UNIT, DEV))

        async def wipe(wid, zeroout, try_export=False):
            w.use_zeroout = zeroout
            ack = await w.order(order(wid))
            seen, export_error = [], None
            while w.running(DEV):
                s = w.status(DEV)
                seen.append(s.done_bytes if s else 0)
                if try_export and export_error is None and s and s.done_bytes > 0:
                    try:
                        await asyncio.to_thread(lio.apply, plan([export()], lio.actual_exports()))
                        export_error = "none"
                    except ExceptionGroup as eg:
                        export_error = "; ".join(str(e) for e in eg.exceptions)
                await asyncio.sleep(0.05)
            final = await w.wait(DEV)
            return ack, final.to_wire(), seen, export_error

        res = {{"total": total, "write_zeroes_max_bytes": int(open(
            "/sys/block/vda/queue/write_zeroes_max_bytes").read())}}

        def dd():
            # raw O_DIRECT writes of the whole partition, as a yardstick
            t0 = time.monotonic()
            r = subprocess.run(["dd", "if=/dev/zero", "of=" + PATH, "bs=4M", "oflag=direct",
                                "conv=fsync", f"count={{total // (4 * MiB)}}"], capture_output=True, text=True)
            return time.monotonic() - t0, r.returncode

        # NOTE: the first write of a sparse image allocates it on the machine: that one is slower
        # for whoever comes first, so dd runs once before the wipes and is timed again after.
        res["dd_first_s"], res["dd_first_rc"] = dd()

        plant()
        ack, final, seen, export_error = asyncio.run(wipe("w-direct", False, try_export=True))
        res["direct"] = dict(ack=ack, final=final, rising=seen == sorted(seen), zero=planted_zero(),
                             export_during=export_error)
        lio.apply(plan([], lio.actual_exports()))          # leftovers of the refused export go

        plant()
        ack, final, seen, _ = asyncio.run(wipe("w-zeroout", True))
        res["zeroout"] = dict(ack=ack, final=final, rising=seen == sorted(seen), zero=planted_zero())

        res["dd_s"], res["dd_rc"] = dd()

        # refusals on the real kernel
        lio.apply(plan([export()], lio.actual_exports()))
        res["exported"] = asyncio.run(w.order(order("w-exported")))

        class Blind(_AgentDevices):        # a port that does not see LIO: the claim still holds
            def exports(self):
                return []

        blind = Wiper(UNIT, Blind(agent), path_of=w.path_of)
        res["claimed"] = asyncio.run(blind.order(order("w-claimed")))
        lio.apply(plan([], lio.actual_exports()))

        subprocess.run(["mkfs.ext4", "-q", "-F", PATH], check=True, capture_output=True)
        mnt = tempfile.mkdtemp(prefix="dvsan-wipe-")
        subprocess.run(["mount", PATH, mnt], check=True)
        try:
            res["mounted"] = asyncio.run(w.order(order("w-mounted")))
            res["mount_point"] = mnt
        finally:
            subprocess.run(["umount", mnt], check=True)
        ack, final, _, _ = asyncio.run(wipe("w-after-mount", True))
        res["after_mount"] = dict(ack=ack, final=final)
        res["signature"] = blkid_probe(DEV).get("TYPE")
        result(**res)
    """, timeout=1800)
    total = out["total"]
    mb = total / 1e6
    dd_rate = mb / out["dd_s"]
    d, z = out["direct"], out["zeroout"]
    direct_rate = mb / d["final"]["elapsed_s"]
    zeroout_rate = mb / z["final"]["elapsed_s"]
    print(f"\nwipe of {out['total'] // (1 << 20)} MiB on unit-a /dev/{DEVICE} (TCG guest, virtio-blk, "
          f"write_zeroes_max_bytes {out['write_zeroes_max_bytes']}):\n"
          f"  dd if=/dev/zero bs=4M oflag=direct conv=fsync, first write of the image: "
          f"{out['dd_first_s']:.2f} s, {mb / out['dd_first_s']:.0f} MB/s\n"
          f"  dd if=/dev/zero bs=4M oflag=direct conv=fsync: {out['dd_s']:.2f} s, {dd_rate:.0f} MB/s\n"
          f"  Wiper method {d['final']['method']}: {d['final']['elapsed_s']:.2f} s, {direct_rate:.0f} MB/s\n"
          f"  Wiper method {z['final']['method']}: {z['final']['elapsed_s']:.2f} s, {zeroout_rate:.0f} MB/s")
    assert out["dd_first_rc"] == out["dd_rc"] == 0
    for run, method in ((d, "direct"), (z, "zeroout" if out["write_zeroes_max_bytes"] > 0 else "direct")):
        assert run["ack"]["status"] == "accepted" and run["ack"]["method"] == method, run
        assert run["final"]["state"] == "succeeded" and run["final"]["done_bytes"] == total, run
        assert run["rising"] and run["zero"], run
    # while a wipe runs, LIO cannot take the device (the wipe's exclusive claim)
    assert d["export_during"] not in (None, "none"), d
    assert out["exported"]["status"] == "refused"
    assert "still exported in LIO as iqn.2026-11.org.dvsan:unit-a:vda1" in out["exported"]["reason"]
    assert out["claimed"]["status"] == "refused" and "held by someone else" in out["claimed"]["reason"]
    assert out["mounted"]["status"] == "refused"
    assert f"mounted on {out['mount_point']}" in out["mounted"]["reason"]
    assert out["after_mount"]["final"]["state"] == "succeeded"
    assert out["signature"] is None, "the ext4 signature survived the wipe"
