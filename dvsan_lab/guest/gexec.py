#!/usr/bin/python3
"""Exec server run inside every lab guest: one JSON request per TCP connection, one JSON reply line.

Stdlib only on purpose: it runs under the guest's /usr/bin/python3 before anything else is set up.
The protocol (version 1), newline-terminated JSON both ways:

    {"v": 1, "op": "ping"}                      -> {"ok": true, "hostname": "unit-a", "uptime": 12.3}
    {"v": 1, "op": "exec", "cmd": "ls /", "timeout": 60, "input": null, "env": {}, "cwd": null}
                                                -> {"ok": true, "rc": 0, "out": "...", "err": "", "timed_out": false}
    {"v": 1, "op": "spawn", "cmd": "...", "log": "/path/x.log", "env": {}, "cwd": null}
                                                -> {"ok": true, "pid": 1234}
    {"v": 1, "op": "shutdown"}                  -> {"ok": true}  (then the server exits, the guest powers off)
    anything wrong                              -> {"ok": false, "error": "..."}
"""

import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
from typing import Any

PROTOCOL_VERSION = 1
# NOTE: 124 is what coreutils' timeout(1) returns, so callers can treat both the same way.
RC_TIMEOUT = 124


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra or {})
    return env


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_exec(req: dict[str, Any]) -> dict[str, Any]:
    """Run a shell command to completion; on timeout kill its whole process group."""
    timeout = float(req.get("timeout") or 600)
    data = req.get("input")
    # NOTE: a new session per command so a timeout can kill the grandchildren too (the group).
    proc = subprocess.Popen(
        ["/bin/bash", "-c", req["cmd"]],
        stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=req.get("cwd") or "/",
        env=_env(req.get("env")),
        start_new_session=True,
    )
    timed_out = False
    try:
        out, err = proc.communicate(data.encode() if data is not None else None, timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc.pid)
        try:
            out, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            # NOTE: a process that left the group still holds the pipes; give up on its output.
            proc.kill()
            out, err = b"", b""
        rc = RC_TIMEOUT
        err += f"\n[gexec] timed out after {timeout:g}s; process group killed\n".encode()
    return {
        "ok": True,
        "rc": rc,
        "out": out.decode(errors="replace"),
        "err": err.decode(errors="replace"),
        "timed_out": timed_out,
    }


def run_spawn(req: dict[str, Any]) -> dict[str, Any]:
    """Start a long-running command detached (own session, output to a log file); return its PID."""
    log = req["log"]
    os.makedirs(os.path.dirname(log) or "/", exist_ok=True)
    with open(log, "ab") as logf:
        proc = subprocess.Popen(
            ["/bin/bash", "-c", req["cmd"]],
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            cwd=req.get("cwd") or "/",
            env=_env(req.get("env")),
            start_new_session=True,
        )
    # NOTE: reap it when it ends so finished background processes do not pile up as zombies.
    threading.Thread(target=proc.wait, daemon=True).start()
    return {"ok": True, "pid": proc.pid}


def ping() -> dict[str, Any]:
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return {"ok": True, "hostname": socket.gethostname(), "uptime": uptime}


class Handler(socketserver.StreamRequestHandler):
    """Serves one request per connection."""

    server: "Server"

    def handle(self) -> None:
        try:
            req = json.loads(self.rfile.readline())
            if req.get("v") != PROTOCOL_VERSION:
                raise ValueError(f"unsupported protocol version {req.get('v')!r}")
            op = req.get("op")
            if op == "ping":
                res = ping()
            elif op == "exec":
                res = run_exec(req)
            elif op == "spawn":
                res = run_spawn(req)
            elif op == "shutdown":
                res = {"ok": True}
                # NOTE: shutdown() blocks until serve_forever returns, so it needs its own thread.
                threading.Thread(target=self.server.shutdown, daemon=True).start()
            else:
                raise ValueError(f"unknown op {op!r}")
        except Exception as e:  # noqa: BLE001 - the client must always get an answer it can report
            res = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        self.wfile.write((json.dumps(res) + "\n").encode())


class Server(socketserver.ThreadingTCPServer):
    """Threaded so a long command does not block pings or other commands."""

    allow_reuse_address = True
    daemon_threads = True


def serve(ip: str, port: int) -> None:
    """Listen on the guest's lab address only, until a shutdown request."""
    with Server((ip, port), Handler) as srv:
        print(f"[gexec] serving on {ip}:{port}", flush=True)
        srv.serve_forever()
    print("[gexec] shut down", flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "serve":
        sys.exit("usage: gexec.py serve IP PORT")
    serve(sys.argv[2], int(sys.argv[3]))
