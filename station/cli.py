"""`dvsan-station`: run the control management station (REST API + auto-configuration listener)."""

import argparse
import getpass
import logging
import sys
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from dvsan.errors import DvsanError, InvalidInput
from dvsan.keyfiles import (
    cli_secret_refused,
    read_secret_file,
    read_secret_lines,
    write_secret_file,
)
from station.app import create_app
from station.settings import StationSettings


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dvsan-station", description=__doc__)
    p.add_argument("--data-dir", type=Path, help="where the SQLite database and cluster key live "
                   "(default /var/lib/dvsan; env DVSAN_DATA_DIR)")
    p.add_argument("--database-url", help="SQLAlchemy URL, e.g. postgresql+psycopg://... (default: SQLite in data dir)")
    p.add_argument("--api-host", help="REST listen address (default 0.0.0.0)")
    p.add_argument("--api-port", type=int, help="REST port (default 7480)")
    p.add_argument("--udp-host", help="protocol listen address (default 0.0.0.0)")
    p.add_argument("--udp-port", type=int, help="protocol UDP port (default 7479)")
    p.add_argument("--liveness-timeout", type=float,
                   help="seconds without a heartbeat before a unit is marked unreachable (default 30; 0: off)")
    p.add_argument("--cluster-key-file", type=Path, help="file holding the key shared with units")
    p.add_argument("--enrolment", choices=["manual", "first-come"],
                   help="what happens to a unit the station does not know: 'manual' (default) keeps it "
                   "pending until an operator approves its key; 'first-come' enrols the first key seen "
                   "for a name (trust on first use; see docs/security.md)")
    p.add_argument("--identity-key-file", type=Path, help="the station's Ed25519 key "
                   "(default DATA_DIR/station_identity.key, made at first start; units need its .pub)")
    p.add_argument("--trap-host", help="SNMP notification listen address (default 0.0.0.0)")
    p.add_argument("--trap-port", type=int, help="SNMP notification UDP port (default 162; 0: no receiver)")
    p.add_argument("--trap-community-file", dest="trap_community_files", action="append", type=Path,
                   metavar="FILE", help="accept SNMPv1/v2c notifications with the communities in this 0600 "
                   "file, one per line (repeat; or env DVSAN_TRAP_COMMUNITIES as a JSON list)")
    p.add_argument("--trap-v3-user", metavar="NAME", help="accept SNMPv3 authPriv (SHA, AES-128) notifications "
                   "from this user; more users: env DVSAN_TRAP_V3_USERS")
    p.add_argument("--trap-v3-auth-key-file", type=Path, metavar="FILE",
                   help="0600 file holding its authentication pass phrase (or env DVSAN_TRAP_V3_AUTH_KEY)")
    p.add_argument("--trap-v3-priv-key-file", type=Path, metavar="FILE",
                   help="0600 file holding its privacy pass phrase (or env DVSAN_TRAP_V3_PRIV_KEY)")
    # NOTE: secrets as values would show in /proc/PID/cmdline: these exist only to say so.
    for opt in ("--trap-community", "--trap-v3-auth-key", "--trap-v3-priv-key"):
        p.add_argument(opt, dest="refused_" + opt[2:].replace("-", "_"), help=argparse.SUPPRESS)
    p.add_argument("--tls-cert", dest="tls_cert_file", type=Path, metavar="FILE",
                   help="serve the REST API over TLS with this PEM certificate (chain); with --tls-key")
    p.add_argument("--tls-key", dest="tls_key_file", type=Path, metavar="FILE",
                   help="the certificate's private key, a 0600 PEM file")
    p.add_argument("--auto-replace", action="store_true", default=None,
                   help="replace a failed mirror member by itself when its host reports it and its unit is down "
                        "(DVSAN_AUTO_REPLACE; default: an operator does, POST /api/v1/mirrors/ID/replace)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", metavar="COMMAND",
                           help="an administration command on the station's database (none: run the station)")
    cu = sub.add_parser("create-user", help="add a user (the first admin, say); asks for the password "
                        "or reads it from a 0600 file")
    cu.add_argument("name")
    cu.add_argument("--role", required=True, choices=["admin", "operator", "viewer"])
    cu.add_argument("--password-file", type=Path, help="0600 file whose first line is the password")
    ct = sub.add_parser("create-token", help="an API token for a user, written to a 0600 file (or printed once)")
    ct.add_argument("user")
    ct.add_argument("--token-file", type=Path, help="write the token here, mode 0600 (default: print it)")
    ct.add_argument("--days", type=int, help="expiry in days (default: until revoked)")
    ct.add_argument("--label", default="cli")
    eh = sub.add_parser("enrol-host", help="enrol a host with its initiator name(s); its token to a 0600 "
                        "file (or printed once)")
    eh.add_argument("name")
    eh.add_argument("--initiator", action="append", required=True, metavar="IQN")
    eh.add_argument("--token-file", type=Path, help="write the host's token here, mode 0600 (default: print it)")
    args = p.parse_args(argv)
    refusals = {"--trap-community": ("--trap-community-file", "DVSAN_TRAP_COMMUNITIES"),
                "--trap-v3-auth-key": ("--trap-v3-auth-key-file", "DVSAN_TRAP_V3_AUTH_KEY"),
                "--trap-v3-priv-key": ("--trap-v3-priv-key-file", "DVSAN_TRAP_V3_PRIV_KEY")}
    for opt, (file_opt, env) in refusals.items():
        if getattr(args, "refused_" + opt[2:].replace("-", "_")) is not None:
            print(f"dvsan-station: {cli_secret_refused(opt, file_opt, env)}", file=sys.stderr)
            return 2
    try:
        secrets = _trap_secret_files(args)
    except DvsanError as e:
        print(f"dvsan-station: {e}", file=sys.stderr)
        return 2
    not_settings = {"trap_community_files", "trap_v3_auth_key_file", "trap_v3_priv_key_file", "command", "name",
                    "role", "password_file", "user", "token_file", "days", "label", "initiator"}
    overrides = {k: v for k, v in vars(args).items()
                 if v is not None and k not in not_settings and not k.startswith("refused_")}
    overrides.update(secrets)
    try:
        settings = StationSettings(**overrides)
        settings.load_cluster_key()   # fail before binding anything
        settings.load_identity()
        settings.snmp_users()
        _check_tls(settings)
    except ValidationError as e:
        print(f"dvsan-station: bad setting: {e}", file=sys.stderr)
        return 2
    except DvsanError as e:
        print(f"dvsan-station: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command is not None:
        try:
            return _admin_command(args, settings)
        except DvsanError as e:
            print(f"dvsan-station {args.command}: {e}", file=sys.stderr)
            return 2
    key_path = settings.cluster_key_file or settings.data_dir / "cluster.key"
    if settings.cluster_key is None:
        logging.getLogger("station").info("cluster key: %s (units need the same key)", key_path)
    tls = ({"ssl_certfile": str(settings.tls_cert_file), "ssl_keyfile": str(settings.tls_key_file)}
           if settings.tls_cert_file else {})
    uvicorn.run(create_app(settings), host=settings.api_host, port=settings.api_port,
                log_level=settings.log_level, **tls)  # type: ignore[arg-type]
    return 0


def _trap_secret_files(args: argparse.Namespace) -> dict[str, object]:
    """Settings read from the secret files named on the command line (each refused unless 0600)."""
    out: dict[str, object] = {}
    if args.trap_community_files:
        out["trap_communities"] = [c for f in args.trap_community_files for c in read_secret_lines(f)]
    for opt in ("trap_v3_auth_key", "trap_v3_priv_key"):
        path = getattr(args, opt + "_file")
        if path is not None:
            out[opt] = read_secret_lines(path)[0]
    return out


def _check_tls(settings: StationSettings) -> None:
    """Both TLS files or neither; the certificate readable, the key 0600."""
    cert, key = settings.tls_cert_file, settings.tls_key_file
    if (cert is None) != (key is None):
        raise InvalidInput("--tls-cert and --tls-key go together")
    if cert is None or key is None:
        return
    if not cert.is_file():
        raise InvalidInput(f"--tls-cert {cert}: no such file")
    if "BEGIN PRIVATE KEY" not in read_secret_file(key) and "PRIVATE KEY-----" not in read_secret_file(key):
        raise InvalidInput(f"--tls-key {key} holds no PEM private key")


def _admin_command(args: argparse.Namespace, settings: StationSettings) -> int:
    """create-user, create-token, enrol-host: straight on the database (the station may be running)."""
    from datetime import timedelta

    from station.db import Database
    from station.services import auth

    db = Database(settings.db_url)
    db.migrate()
    try:
        if args.command == "create-user":
            if args.password_file is not None:
                password = read_secret_lines(args.password_file)[0]
            else:
                password = getpass.getpass(f"password for {args.name}: ")
                if getpass.getpass("again: ") != password:
                    print("dvsan-station create-user: the passwords differ", file=sys.stderr)
                    return 2
            with db.session() as s:
                auth.create_user(s, args.name, args.role, password)
            print(f"user {args.name} created with role {args.role}")
            return 0
        with db.session() as s:
            if args.command == "create-token":
                if args.days is not None and not 1 <= args.days <= 3650:
                    print("dvsan-station create-token: --days must be 1 to 3650", file=sys.stderr)
                    return 2
                t = auth.create_token(s, user=args.user, label=args.label[:63],
                                      ttl=timedelta(days=args.days) if args.days else None)
                what = f"token {t.id} for user {args.user}"
            else:
                auth.enrol_host(s, args.name, args.initiator)
                t = auth.create_token(s, host=args.name, label="host")
                what = f"host {args.name} enrolled; its token {t.id}"
        if args.token_file is not None:
            write_secret_file(args.token_file, t.value + "\n")
            print(f"{what} written to {args.token_file} (mode 0600)")
        else:
            print(f"{what} (shown once, keep it in a 0600 file):\n{t.value}")
        return 0
    finally:
        db.dispose()


if __name__ == "__main__":
    sys.exit(main())
