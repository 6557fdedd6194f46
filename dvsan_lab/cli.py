"""`dvsan-lab`: boot, inspect, use and tear down the guest lab from a shell.

Exit codes: 0 success (status: lab up); 1 failure (status: partly up); 2 usage; 3 status: lab
down; 4 missing tools (preflight); exec passes the guest command's exit code through, and 255
means the exec channel itself failed (like ssh).
"""

import argparse
import importlib
import importlib.util
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict

from dvsan_lab.errors import ExecChannelError, LabError, PreflightError
from dvsan_lab.lab import Lab, format_status

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_DOWN, EXIT_PREFLIGHT, EXIT_CHANNEL = 0, 1, 2, 3, 4, 255


def cmd_up(lab: Lab, args: argparse.Namespace) -> int:
    print(f"booting {', '.join(lab.guests)} (TCG, state in {lab.state_dir}) ...", flush=True)
    t = lab.up()
    print(f"disks and network ready in {t.prepare:.1f}s")
    for guest, secs in t.guests.items():
        print(f"  {guest:<8} {lab.ip(guest):<15} answering after {secs:.1f}s   "
              f"log {lab.log_path(guest)}")
    print(f"lab up in {t.total:.1f}s; machine side {lab.host_ip}, shared folder {lab.shared_dir}")
    return EXIT_OK


def cmd_down(lab: Lab, args: argparse.Namespace) -> int:
    done = lab.down()
    for line in done or ["nothing to do: the lab was down"]:
        print(line)
    return EXIT_OK


def cmd_status(lab: Lab, args: argparse.Namespace) -> int:
    st = lab.status()
    if args.json:
        print(json.dumps({**asdict(st), "up": st.up, "down": st.down}, indent=2))
    else:
        print("lab " + ("up" if st.up else "down" if st.down else "partly up") + f" ({lab.state_dir})")
        print(format_status(st))
    return EXIT_OK if st.up else EXIT_DOWN if st.down else EXIT_FAIL


def cmd_exec(lab: Lab, args: argparse.Namespace) -> int:
    if not args.cmd:
        print("dvsan-lab exec: missing command", file=sys.stderr)
        return EXIT_USAGE
    # NOTE: joined with spaces like ssh does, so `exec unit-a 'ls | wc -l'` keeps its pipe.
    res = lab.exec(args.guest, " ".join(args.cmd), timeout=args.timeout)
    sys.stdout.write(res.out)
    sys.stderr.write(res.err)
    return res.rc


def cmd_preflight(lab: Lab, args: argparse.Namespace) -> int:
    lab.preflight()
    print("preflight ok: everything the lab needs is installed")
    return EXIT_OK


def cmd_demo(lab: Lab, args: argparse.Namespace) -> int:
    # NOTE: demo.py is written separately; the lab works without it.
    if importlib.util.find_spec("dvsan_lab.demo") is None:
        print("the demo is not available in this checkout (no dvsan_lab/demo.py)", file=sys.stderr)
        return EXIT_FAIL
    demo = importlib.import_module("dvsan_lab.demo")
    # The demo gets the parsed arguments: `keep` and any extra words in `demo_args`.
    rc = demo.main(lab, args)
    return rc if isinstance(rc, int) else EXIT_OK


def cmd_guest(lab: Lab, args: argparse.Namespace) -> int:
    """boot / power-off / reboot / freeze / thaw of guests in a running lab."""
    for guest in args.guests:
        if args.command == "boot":
            took = lab.boot(guest)
            print(f"{guest}: " + (f"answering after {took[guest]:.1f}s" if took else "already running"))
        elif args.command == "power-off":
            lab.power_off(guest)
            print(f"{guest}: powered off (plug pulled; disks kept)")
        elif args.command == "reboot":
            print(f"{guest}: answering again after {lab.reboot(guest):.1f}s")
        elif args.command == "freeze":
            lab.freeze(guest)
            print(f"{guest}: frozen (`dvsan-lab thaw {guest}` lets it run on)")
        else:
            lab.thaw(guest)
            print(f"{guest}: running again")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dvsan-lab",
        description="Guests on a stock Debian kernel (TCG) with real LIO and open-iscsi: "
        "unit-a (partitioned disk), host-b, host-c on 10.213.77.0/24; on demand unit-d, "
        "unit-spare and host-spare (the failure lab).",
        epilog=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = sub.add_parser("up", help="boot all guests and wait until each answers")
    up.add_argument("--timeout", type=float, help="seconds to wait for the guests (default 300)")
    up.add_argument("--console", action="store_true", help="log each guest's kernel console")
    up.set_defaults(func=cmd_up)
    sub.add_parser("down", help="stop the guests and remove the lab network").set_defaults(func=cmd_down)
    for name, text in (("boot", ("boot guests into the running lab (on-demand ones: unit-d, "
                                 "unit-spare, host-spare; or ones powered off)")),
                       ("power-off", "pull a guest's plug (its emulator is killed; disks kept)"),
                       ("reboot", "hard-reset a guest: power off, boot again"),
                       ("freeze", "stop a guest's emulator (SIGSTOP): it hangs, to its peers dead"),
                       ("thaw", "let a frozen guest run on")):
        g = sub.add_parser(name, help=text)
        g.add_argument("guests", nargs="+", metavar="GUEST")
        g.set_defaults(func=cmd_guest)
    st = sub.add_parser("status", help="show what runs (exit 0 up, 3 down, 1 partly up)")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=cmd_status)
    ex = sub.add_parser("exec", help="run a command in a guest as root")
    ex.add_argument("--timeout", type=float, default=600.0, help="seconds (default 600)")
    ex.add_argument("guest", help="unit-a, host-b or host-c")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, help="the command (bash -c)")
    ex.set_defaults(func=cmd_exec)
    sub.add_parser("preflight", help="check that everything needed is installed").set_defaults(
        func=cmd_preflight
    )
    demo = sub.add_parser("demo", help="run the end-to-end demo (if available)")
    demo.add_argument("--keep", action="store_true", help="leave a lab the demo booted running")
    demo.add_argument("demo_args", nargs=argparse.REMAINDER, help="passed to the demo")
    demo.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `dvsan-lab`."""
    args = build_parser().parse_args(argv)
    try:
        lab = Lab(boot_timeout=getattr(args, "timeout", None) if args.command == "up" else None,
                  console=True if getattr(args, "console", False) else None)
        rc: int = args.func(lab, args)
        return rc
    except PreflightError as e:
        print(f"dvsan-lab: {e}", file=sys.stderr)
        return EXIT_PREFLIGHT
    except ExecChannelError as e:
        print(f"dvsan-lab: {e}", file=sys.stderr)
        return EXIT_CHANNEL
    except LabError as e:
        print(f"dvsan-lab: {e}", file=sys.stderr)
        return EXIT_FAIL
    except ExceptionGroup as eg:
        print(f"dvsan-lab: {eg.message}:", file=sys.stderr)
        for failure in eg.exceptions:
            print(f"  - {failure}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        print("dvsan-lab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
