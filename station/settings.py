"""Station settings: environment variables (DVSAN_*), overridden by command-line options."""

import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from dvsan import identity, keyfiles
from dvsan.errors import InvalidInput
from dvsan.traps import UsmUser


class StationSettings(BaseSettings):
    """Everything the station needs; the embedded default is a SQLite file under `data_dir`."""

    model_config = SettingsConfigDict(env_prefix="DVSAN_", extra="ignore")

    environment: Literal["production", "development"] = "production"
    data_dir: Path = Path("/var/lib/dvsan")
    database_url: str | None = None
    api_host: str = "0.0.0.0"
    api_port: int = Field(7480, ge=0, le=65535)
    udp_host: str = "0.0.0.0"
    udp_port: int = Field(7479, ge=0, le=65535)
    cluster_key: SecretStr | None = None
    cluster_key_file: Path | None = None
    export_timeout: float = Field(15.0, gt=0)
    # a unit silent this long (no heartbeat) is marked unreachable; 0 turns the check off
    liveness_timeout: float = Field(30.0, ge=0)
    # SNMP notification receiver (station/listeners/snmp/receiver.py): it runs when trap_port is not 0 and at least
    # one community or SNMPv3 user is configured; more v3 users: DVSAN_TRAP_V3_USERS (JSON list
    # of {"name", "auth_key", "priv_key"}).
    trap_host: str = "0.0.0.0"
    trap_port: int = Field(162, ge=0, le=65535)
    trap_communities: list[SecretStr] = Field(default_factory=list)
    trap_v3_user: str | None = None
    trap_v3_auth_key: SecretStr | None = None
    trap_v3_priv_key: SecretStr | None = None
    trap_v3_users: list[dict[str, SecretStr]] = Field(default_factory=list)
    # Unit enrolment (station/services/enrolment.py, docs/security.md): "manual" keeps an unknown unit
    # pending until an operator approves its key; "first-come" enrols the first key seen for a
    # name (trust on first use: for labs, or while enrolling units on a trusted network).
    enrolment: Literal["manual", "first-come"] = "manual"
    # the station's own Ed25519 key (default DATA_DIR/station_identity.key, made at first start;
    # its public half is written beside it as station_identity.pub for the units)
    identity_key_file: Path | None = None
    log_level: str = "info"
    # TLS for the REST API: a PEM certificate (chain) and its key (0600); both or neither
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # how long the audit log keeps its rows (station/services/audit.py)
    audit_retention_days: int = Field(365, ge=1, le=36500)
    # a health report that says a mirror member is faulty or missing on a unit that is not online
    # starts its replacement by itself (station/services/mirrors.py); else an operator does
    auto_replace: bool = False

    def snmp_users(self) -> list[UsmUser]:
        """The SNMPv3 users traps may come from (authPriv, SHA + AES-128); InvalidInput if one is incomplete."""
        users = [UsmUser(str(u.get("name", SecretStr("")).get_secret_value()),
                         u.get("auth_key", SecretStr("")).get_secret_value(),
                         u.get("priv_key", SecretStr("")).get_secret_value()) for u in self.trap_v3_users]
        if self.trap_v3_user or self.trap_v3_auth_key or self.trap_v3_priv_key:
            if not (self.trap_v3_user and self.trap_v3_auth_key and self.trap_v3_priv_key):
                raise InvalidInput("an SNMPv3 trap user needs a name, an authentication key and a privacy key")
            users.append(UsmUser(self.trap_v3_user, self.trap_v3_auth_key.get_secret_value(),
                                 self.trap_v3_priv_key.get_secret_value()))
        return users

    @property
    def snmp_enabled(self) -> bool:
        """Whether the station takes SNMP notifications (a port, and someone allowed to send)."""
        return self.trap_port != 0 and bool(self.trap_communities or self.trap_v3_users or self.trap_v3_user)

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'station.db'}"

    def load_cluster_key(self) -> bytes:
        """The shared protocol key: given, read from a file, or made once (mode 0600) in data_dir.

        Outside development a key that breaks the rule of dvsan/keyfiles.py (short, few distinct
        characters, a well-known word) is refused; a key file that group or others may read is
        refused always.
        """
        if self.cluster_key is not None:
            key = self.cluster_key.get_secret_value().encode()
        else:
            path = self.cluster_key_file or (self.data_dir / "cluster.key")
            if not path.exists():
                if self.cluster_key_file is not None:
                    raise InvalidInput(f"cluster key file {path} does not exist")
                path.parent.mkdir(parents=True, exist_ok=True)
                write_secret_file(path, secrets.token_hex(32) + "\n")
            key = keyfiles.read_secret_file(path).strip().encode()
        if self.environment != "development":
            keyfiles.check_cluster_key(key)
        if len(key) < keyfiles.MIN_KEY_BYTES:
            key = key.ljust(keyfiles.MIN_KEY_BYTES, b"\0")
        return key

    def load_secrets_key(self) -> bytes:
        """The key that seals secrets in the database (CHAP): DATA_DIR/secrets.key, made once, 0600."""
        path = self.data_dir / "secrets.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_secret_file(path, secrets.token_hex(32) + "\n")
        text = keyfiles.read_secret_file(path).strip()
        try:
            key = bytes.fromhex(text)
        except ValueError as e:
            raise InvalidInput(f"{path} must hold 64 hexadecimal digits") from e
        if len(key) != 32:
            raise InvalidInput(f"{path} must hold 64 hexadecimal digits")
        return key

    def load_identity(self) -> "identity.Ed25519PrivateKey":
        """The station's signing key, made at first start; its public key is kept beside it (.pub)."""
        path = self.identity_key_file or (self.data_dir / "station_identity.key")
        key, _created = identity.load_or_create(path)
        pub = path.with_suffix(".pub")
        try:
            current = pub.read_text().strip()
        except OSError:
            current = ""
        if current != identity.encode_public(key):
            identity.save_public_key(pub, key)
        return key


def write_secret_file(path: Path, text: str) -> None:
    """Atomic write of a secret, mode 0600 (dvsan/keyfiles.py)."""
    keyfiles.write_secret_file(path, text)
