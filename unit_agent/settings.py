"""Unit agent settings: environment (DVSAN_UNIT_*) overridden by command-line options."""

import socket
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from dvsan.errors import InvalidInput


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
    sysfs_root: str = "/"
    heartbeat_interval: float = Field(10.0, gt=0)   # the station's liveness timeout must be >= 3x this
    storage_interface: str | None = None            # default: the interface holding the portal address
    link_watch: bool = True
    log_level: str = "info"

    def load_cluster_key(self) -> bytes:
        if self.cluster_key is not None:
            key = self.cluster_key.get_secret_value().encode()
        elif self.cluster_key_file is not None:
            try:
                key = self.cluster_key_file.read_text().strip().encode()
            except OSError as e:
                raise InvalidInput(f"cannot read cluster key file {self.cluster_key_file}: {e.strerror}") from e
        else:
            raise InvalidInput("no cluster key: give --cluster-key-file (the station keeps it in its "
                               "data directory as cluster.key) or DVSAN_UNIT_CLUSTER_KEY")
        if len(key) < 16:
            raise InvalidInput("the cluster key is shorter than 16 characters")
        return key
