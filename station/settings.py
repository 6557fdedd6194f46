"""Station settings: environment variables (DVSAN_*), overridden by command-line options."""

import os
import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from dvsan.errors import InvalidInput

WEAK_KEYS = {"changeme", "secret", "password", "dvsan", "default", "test"}


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
    log_level: str = "info"

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'station.db'}"

    def load_cluster_key(self) -> bytes:
        """The shared protocol key: given, read from a file, or made once and kept in data_dir.

        A key that is short or a well-known word is refused outside development.
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
            key = path.read_text().strip().encode()
        if self.environment != "development" and (len(key) < 16 or key.decode(errors="replace").lower() in WEAK_KEYS):
            raise InvalidInput("the cluster key is too weak: use at least 16 random characters "
                               "(or leave it unset and the station makes one in its data directory)")
        if len(key) < 16:
            key = key.ljust(16, b"\0")
        return key


def write_secret_file(path: Path, text: str) -> None:
    """Atomic write of a secret: temp file, fsync, rename, mode 0600."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
