"""The REST API over TLS (issue 6): the real station serving a certificate made here, the host agent
verifying it with --ca-file; plain HTTP, an unknown CA and bad TLS settings refused clearly."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from host_agent import cli as host_cli
from tests.component.conftest import StationProc, free_port
from tests.component.test_host_agent import enrol_host
from tests.unit.test_host_detach import FakeBlock, FakeIscsi


def self_signed(where: Path, name: str = "station") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (it is its own CA) and its 0600 key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = where / f"{name}.crt", where / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    os.close(fd)
    return cert_path, key_path


@pytest.fixture
def tls_station(tmp_path: Path):
    cert, key = self_signed(tmp_path)
    st = StationProc(tmp_path / "station", free_port(), free_port(socket.SOCK_DGRAM),
                     extra_args=("--tls-cert", str(cert), "--tls-key", str(key)), ca_file=cert)
    st.data_dir.mkdir()
    st.start()
    yield st
    st.stop()


def test_gp_the_api_over_tls_and_the_host_agent_verifying_it(tls_station, tmp_path, capsys):
    st = tls_station
    assert st.url.startswith("https://")
    assert st.get("/api/v1/units").status_code == 200
    token = enrol_host(st, tmp_path, "host-b", "iqn.2026-11.org.dvsan.lab:host-b")
    common = ["--station", st.url, "--name", "host-b", "--token-file", str(token),
              "--state-file", str(tmp_path / "host" / "a.json")]
    rc = host_cli.main([*common, "--ca-file", str(st.ca_file), "sync"], iscsi=FakeIscsi(), block=FakeBlock())
    assert rc == 0, capsys.readouterr().err
    # without the CA the host agent refuses the station's certificate, saying so
    rc = host_cli.main([*common, "sync"], iscsi=FakeIscsi(), block=FakeBlock())
    err = capsys.readouterr().err
    assert rc == 1 and "CERTIFICATE_VERIFY_FAILED" in err, err
    # a client without the CA, and plain HTTP to the TLS port, get nothing
    with pytest.raises(httpx.ConnectError):
        httpx.get(st.url + "/healthz", timeout=5)
    with pytest.raises(httpx.HTTPError):
        httpx.get(st.url.replace("https", "http") + "/healthz", timeout=5)


def test_ep_bad_tls_settings_are_refused_at_start(tmp_path):
    cert, key = self_signed(tmp_path)
    st = StationProc(tmp_path / "station", free_port(), free_port(socket.SOCK_DGRAM))
    st.data_dir.mkdir()
    os.chmod(key, 0o644)
    for args, says in ((("--tls-cert", str(cert)), "--tls-cert and --tls-key go together"),
                       (("--tls-cert", str(cert), "--tls-key", str(key)), "chmod 600"),
                       (("--tls-cert", str(tmp_path / "none.crt"), "--tls-key", str(key)), "no such file")):
        r = st.admin_command(*args, "create-token", "nobody")   # settings are checked before anything runs
        assert r.returncode == 2 and says in r.stderr, (args, r.stderr)
    os.chmod(key, 0o600)
    (tmp_path / "cert-as-key").write_text(cert.read_text())
    os.chmod(tmp_path / "cert-as-key", 0o600)
    r = st.admin_command("--tls-cert", str(cert), "--tls-key", str(tmp_path / "cert-as-key"), "create-token", "x")
    assert r.returncode == 2 and "holds no PEM private key" in r.stderr
