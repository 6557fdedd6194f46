"""`dvsan-station`: run the control management station (REST API + auto-configuration listener)."""

import argparse
import logging
import sys
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from dvsan.errors import DvsanError
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
    p.add_argument("--trap-community", dest="trap_communities", action="append", metavar="COMMUNITY",
                   help="accept SNMPv1/v2c notifications with this community (repeat; "
                   "env DVSAN_TRAP_COMMUNITIES as a JSON list)")
    p.add_argument("--trap-v3-user", metavar="NAME", help="accept SNMPv3 authPriv (SHA, AES-128) notifications "
                   "from this user; more users: env DVSAN_TRAP_V3_USERS")
    p.add_argument("--trap-v3-auth-key", metavar="PASSPHRASE",
                   help="its authentication pass phrase (better: env DVSAN_TRAP_V3_AUTH_KEY)")
    p.add_argument("--trap-v3-priv-key", metavar="PASSPHRASE",
                   help="its privacy pass phrase (better: env DVSAN_TRAP_V3_PRIV_KEY)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    args = p.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = StationSettings(**overrides)
        settings.load_cluster_key()   # fail before binding anything
        settings.load_identity()
        settings.snmp_users()
    except ValidationError as e:
        print(f"dvsan-station: bad setting: {e}", file=sys.stderr)
        return 2
    except DvsanError as e:
        print(f"dvsan-station: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    key_path = settings.cluster_key_file or settings.data_dir / "cluster.key"
    if settings.cluster_key is None:
        logging.getLogger("station").info("cluster key: %s (units need the same key)", key_path)
    uvicorn.run(create_app(settings), host=settings.api_host, port=settings.api_port,
                log_level=settings.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
