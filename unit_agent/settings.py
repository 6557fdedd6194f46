"""Unit agent settings: environment (DVSAN_UNIT_*) overridden by command-line options."""

import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from dvsan import identity, keyfiles
from dvsan.errors import InvalidInput
from dvsan.traps import TrapSecurity, UsmUser, engine_id_for


class UnitSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DVSAN_UNIT_", extra="ignore")

    name: str = Field(default_factory=lambda: socket.gethostname().split(".")[0].lower())
    station: str = ""                       # HOST[:PORT] of the station's protocol port
    station_domain: str | None = None       # find the station by SRV _dvsan._udp.<domain>
    dns_server: str | None = None           # IP[:PORT] of the DNS server (default: resolv.conf)
    listen_host: str = "0.0.0.0"
    listen_port: int = Field(7478, ge=0, le=65535)
    portal_address: str | None = None       # default: the local address that faces the station
    portal_port: int = Field(3260, ge=1, le=65535)
    dns_name: str | None = None
    cluster_key: SecretStr | None = None
    cluster_key_file: Path | None = None
    disks: list[str] = Field(default_factory=list)   # restrict offers to these disks (default all)
    # which unmounted partitions to offer: empty (no signature: the default) | marked (GPT name
    # dvsan*) | all-unmounted; see unit_agent/inventory.py and docs/operations.md
    offer: Literal["empty", "marked", "all-unmounted"] = "empty"
    offer_mark: str = "dvsan"    # policy "marked": the GPT partition name (or label) prefix
    sysfs_root: str = "/"
    heartbeat_interval: float = Field(10.0, gt=0)   # the station's liveness timeout must be >= 3x this
    stats_interval: float = Field(10.0, ge=0)       # seconds between STATS samples; 0: none sent
    storage_interface: str | None = None            # default: the interface holding the portal address
    link_watch: bool = True
    # Wipes: let the disk zero a released volume itself (BLKZEROOUT, when it offloads write-zeroes)
    # or always write zeros (slower, for devices whose write-zeroes an operator does not trust).
    wipe_zeroout: bool = True
    # SNMP notifications (unit_agent/snmp.py), sent when at least one destination is given; with
    # a v3 user they are authPriv (HMAC-SHA-96, AES-128), else SNMPv2c with the community.
    trap_destinations: list[str] = Field(default_factory=list)   # HOST[:PORT], port 162 by default
    trap_community: SecretStr | None = None
    trap_v3_user: str | None = None
    trap_v3_auth_key: SecretStr | None = None
    trap_v3_priv_key: SecretStr | None = None
    snmp_engine_id: str | None = None       # hex, 5-32 octets; default derived from the unit name
    # Identity (docs/security.md): this unit's Ed25519 key (made at first start, default
    # STATE_DIR/unit.key) and the station's public key: given (base64, or a file such as the
    # station's DATA_DIR/station_identity.pub), pinned earlier (STATE_DIR/station.pub), or, with
    # station_trust "first-contact", pinned from the first station that answers. (STATE_DIR:
    # state_dir below, shared with the pool pin.)
    identity_key_file: Path | None = None
    station_key: str | None = None
    station_key_file: Path | None = None
    station_trust: Literal["pinned", "first-contact"] = "pinned"
    log_level: str = "info"
    # Local state: the pinned pool (pool.json: which station's EXPORTS this unit obeys).
    state_dir: Path = Path("/var/lib/dvsan-unit")

    def trap_security(self) -> TrapSecurity:
        """How notifications are signed; InvalidInput if the settings are incomplete or contradict."""
        user = None
        if self.trap_v3_user or self.trap_v3_auth_key or self.trap_v3_priv_key:
            if not (self.trap_v3_user and self.trap_v3_auth_key and self.trap_v3_priv_key):
                raise InvalidInput("an SNMPv3 trap user needs --trap-v3-user, --trap-v3-auth-key-file and "
                                   "--trap-v3-priv-key-file")
            user = UsmUser(self.trap_v3_user, self.trap_v3_auth_key.get_secret_value(),
                           self.trap_v3_priv_key.get_secret_value())
        community = self.trap_community.get_secret_value() if self.trap_community is not None else None
        return TrapSecurity(community=community, user=user)

    def engine_id(self) -> bytes:
        """This unit's SNMP engine ID: as configured (hex), else derived from its name."""
        if not self.snmp_engine_id:
            return engine_id_for(self.name)
        text = self.snmp_engine_id.lower().removeprefix("0x")
        try:
            raw = bytes.fromhex(text)
        except ValueError as e:
            raise InvalidInput(f"SNMP engine ID {self.snmp_engine_id!r} is not hexadecimal") from e
        if not 5 <= len(raw) <= 32:
            raise InvalidInput("an SNMP engine ID is 5-32 octets (RFC 3411)")
        return raw

    def load_cluster_key(self) -> bytes:
        """The key shared with the station, given or read from a file that only its owner may read;
        refused if it breaks the rule of dvsan/keyfiles.py (short, few distinct characters, a word)."""
        if self.cluster_key is not None:
            key = self.cluster_key.get_secret_value().encode()
        elif self.cluster_key_file is not None:
            key = keyfiles.read_secret_file(self.cluster_key_file).strip().encode()
        else:
            raise InvalidInput("no cluster key: give --cluster-key-file (the station keeps it in its "
                               "data directory as cluster.key) or DVSAN_UNIT_CLUSTER_KEY")
        return keyfiles.check_cluster_key(key)

    @property
    def key_path(self) -> Path:
        return self.identity_key_file or (self.state_dir / "unit.key")

    def load_signer(self) -> identity.Signer:
        """This unit's key, made at first start; with a `.prev` key beside it, a rotation under way."""
        key, _created = identity.load_or_create(self.key_path)
        prev_path = self.key_path.with_name(self.key_path.name + ".prev")
        previous = identity.load_private_key(prev_path) if prev_path.exists() else None
        return identity.Signer(self.name, key, previous, on_rotated=lambda: prev_path.unlink(missing_ok=True))

    def load_station_pin(self) -> identity.StationPin:
        """The station's public key as configured or pinned; InvalidInput if there is none and
        the site does not trust the first station that answers."""
        pinned = self.state_dir / "station.pub"
        if self.station_key:
            return identity.StationPin(identity.decode_public(self.station_key))
        if self.station_key_file is not None:
            return identity.StationPin(identity.load_public_key(self.station_key_file))
        if pinned.exists():
            return identity.StationPin(identity.load_public_key(pinned))
        if self.station_trust == "first-contact":
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            return identity.StationPin(None, first_contact=True,
                                       save=lambda k: identity.save_public_key(pinned, k))
        raise InvalidInput("no station key: give --station-key-file (the station writes it as "
                           "DATA_DIR/station_identity.pub) or --station-key, or allow pinning the first "
                           "station that answers with --station-trust first-contact")

    def rotate_key(self) -> tuple[str, str]:
        """Make a new key; the old one stays (as .prev) to sign for it until the station takes it.

        Returns the (old, new) fingerprints.
        """
        prev_path = self.key_path.with_name(self.key_path.name + ".prev")
        if prev_path.exists():
            raise InvalidInput(f"a key rotation is already under way ({prev_path} exists): start the "
                               "agent so the station takes the new key")
        old = identity.load_private_key(self.key_path)
        self.key_path.rename(prev_path)
        new, _ = identity.load_or_create(self.key_path)
        return identity.fingerprint(old), identity.fingerprint(new)
