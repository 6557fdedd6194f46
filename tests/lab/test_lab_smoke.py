"""Smoke test of the lab itself: guests answer and carry what the data-path tests rely on."""

import json
import socket

import pytest

from dvsan_lab import ExecChannelError, Lab, LabError


def test_gp_every_guest_answers_with_its_own_name(lab: Lab) -> None:
    booted = [g for g in lab.guests if lab.running(g)]
    assert {"unit-a", "host-b", "host-c"} <= set(booted)      # on-demand guests only when booted
    for guest in booted:
        res = lab.exec(guest, "hostname", check=True)
        assert res.out.strip() == guest


def test_gp_unit_sees_its_three_partitions(lab: Lab) -> None:
    res = lab.exec("unit-a", "sfdisk --json /dev/vda", check=True)
    table = json.loads(res.out)["partitiontable"]
    sizes_mib = [p["size"] * table["sectorsize"] // 2**20 for p in table["partitions"]]
    assert table["label"] == "gpt"
    assert sizes_mib == [512, 1280, 2048]


def test_gp_unit_has_configfs_target_and_rtslib(lab: Lab) -> None:
    lab.exec("unit-a", "test -d /sys/kernel/config/target/core", check=True)
    lab.exec("unit-a", "test -d /etc/target", check=True)
    res = lab.exec("unit-a", f"{lab.python} -c 'import rtslib_fb, dvsan; print(\"ok\")'", check=True)
    assert res.out.strip() == "ok"


def test_gp_hosts_have_distinct_initiator_names_and_iscsid(lab: Lab) -> None:
    names = {}
    for guest in ("host-b", "host-c"):
        res = lab.exec(guest, "cat /etc/iscsi/initiatorname.iscsi", check=True)
        names[guest] = res.out.strip().removeprefix("InitiatorName=")
        assert names[guest] == lab.initiator_name(guest)
        lab.exec(guest, "pgrep -x iscsid", check=True)
        # NOTE: 21 is ISCSI_ERR_NO_OBJS_FOUND, "No active sessions": iscsiadm works, nothing logged in.
        assert lab.exec(guest, "iscsiadm -m session").rc in (0, 21)
    assert len(set(names.values())) == 2


def test_gp_guests_reach_each_other_and_the_machine(lab: Lab) -> None:
    lab.exec("host-b", f"exec 3<>/dev/tcp/{lab.ip('unit-a')}/7000", check=True)
    lab.exec("host-c", "getent hosts station unit-a", check=True)
    # The station listens on the machine side of the lab network: a guest must get there.
    with socket.create_server((lab.host_ip, 0)) as srv:
        port = srv.getsockname()[1]
        lab.exec("unit-a", f"echo hello-machine > /dev/tcp/station/{port}", check=True)
        srv.settimeout(10)
        conn, (peer, _) = srv.accept()
        with conn:
            assert conn.makefile().readline() == "hello-machine\n"
    assert peer == lab.ip("unit-a")


def test_gp_shared_dir_is_writable_from_guests(lab: Lab) -> None:
    target = lab.shared_dir / "smoke" / "from-host-c"
    lab.exec("host-c", f"mkdir -p {target.parent} && echo written-in-guest > {target}", check=True)
    assert target.read_text() == "written-in-guest\n"


def test_gp_spawn_returns_at_once_and_runs_detached(lab: Lab) -> None:
    log = lab.shared_dir / "smoke" / "spawn.log"
    pid = lab.spawn("host-b", "echo started; exec sleep 600", log)
    try:
        lab.exec("host-b", f"test \"$(ps -o sid= -p {pid} | tr -d ' ')\" = {pid}", check=True)
    finally:
        lab.exec("host-b", f"kill -- -{pid}")
    assert log.read_text().startswith("started")


def test_ep_command_timeout_kills_and_reports_124(lab: Lab) -> None:
    res = lab.exec("host-c", "sleep 30", timeout=1)
    assert res.rc == 124
    assert "timed out" in res.err


def test_ep_unknown_guest_is_a_clear_error(lab: Lab) -> None:
    with pytest.raises(LabError, match="no guest 'nope'"):
        lab.exec("nope", "true")


def test_ep_dead_channel_raises_exec_channel_error(lab: Lab) -> None:
    from dvsan_lab.channel import ExecChannel

    # NOTE: the lab address of the machine itself has no exec server: a refused connection.
    with pytest.raises(ExecChannelError, match="failed"):
        ExecChannel("nobody", lab.host_ip, 9, lab.host_ip).ping(timeout=2)
