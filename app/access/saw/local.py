"""The local development SAW: a generated CA, one SAW client certificate (+ a PKCS#12 for a browser) and an
nginx config made from ops/nginx/saw.conf, all in one directory. Laptop only.

Everything here is named LOCAL DEVELOPMENT (the CAs, the certificates, the registry label), so a device
made this way is never mistaken for a managed SAW; `SawSettings.local_dev` is refused next to a production
issuer (`refuse_local_saw_beside_production`). The front door is the production one: the same nginx site,
the same mutual TLS and the same trust rules in voicelog, only the certificates are made on the spot.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SITE_TEMPLATE = Path(__file__).resolve().parents[3] / "ops" / "nginx" / "saw.conf"
NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
LOCAL_LABEL_PREFIX = "LOCAL-DEV-SAW"
ORGANIZATION = "voicelog LOCAL DEVELOPMENT - not for production"
VALIDITY = timedelta(days=90)
DEFAULT_SAW_PORT = 8443


class LocalSawError(RuntimeError):
    """The local SAW cannot be written (no template, a file in the way); the message says what to do."""


@dataclass(frozen=True)
class LocalSaw:
    """Where the local SAW's files are, and what the SAW's certificate is (its PEM and SHA-256)."""

    directory: Path
    port: int
    upstream_port: int
    cert_pem: str
    sha256: str
    p12_password: str

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def path(self, name: str) -> Path:
        return self.directory / name

    @property
    def nginx_args(self) -> list[str]:
        """nginx's arguments (after the binary): its prefix, config and error log all in the directory."""
        return ["-p", str(self.directory), "-c", str(self.path("nginx.conf")), "-e", str(self.path("error.log"))]

    def nginx_command(self, binary: str = "nginx") -> str:
        return " ".join([binary, *self.nginx_args])

    def curl_tls(self) -> str:
        """curl's options to be this SAW: its certificate and key, and the local server CA to trust."""
        return (f"--cert {self.path('saw.crt')} --key {self.path('saw.key')} "
                f"--cacert {self.path('server-ca.crt')}")


def nginx_binary() -> str | None:
    """The nginx on PATH or at a Debian/source-install path, if any."""
    from shutil import which

    return which("nginx") or next((p for p in NGINX_CANDIDATES if os.access(p, os.X_OK)), None)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca(common_name: str, now: datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], common_name: str, now: datetime, *,
          server: bool) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca[1].subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca[0].public_key()), critical=False)
    )
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.IPAddress(IPv4Address("127.0.0.1")), x509.IPAddress(IPv6Address("::1")),
            x509.DNSName("localhost")]), critical=False)
    return key, builder.sign(ca[0], hashes.SHA256())


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    path.chmod(mode)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _replace_exactly(text: str, old: str, new: str) -> str:
    if old not in text:
        raise LocalSawError(f"{SITE_TEMPLATE} no longer contains {old!r}; update app/access/saw/local.py")
    return text.replace(old, new)


def local_site_config(directory: Path, *, port: int, upstream_port: int) -> str:
    """ops/nginx/saw.conf with this directory's files, a loopback listener and voicelog's port."""
    if not SITE_TEMPLATE.is_file():
        raise LocalSawError(f"{SITE_TEMPLATE} is missing: run `voicelog dev saw` from a source checkout")
    site = SITE_TEMPLATE.read_text()
    site = _replace_exactly(site, "listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
    site = _replace_exactly(site, "listen [::]:443 ssl;", "")
    site = _replace_exactly(site, "server_name saw.voicelog.example.com;", "server_name localhost;")
    site = _replace_exactly(site, "server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream_port};")
    site = _replace_exactly(site, "shared:voicelog_saw:10m", "shared:voicelog_local_saw:1m")
    for name in ("server.crt", "server.key", "saw-ca.crt", "saw-ca.crl"):
        site = _replace_exactly(site, f" /etc/voicelog/saw/{name};", f" {directory / name};")
    header = "# voicelog LOCAL DEVELOPMENT SAW (voicelog dev saw): ops/nginx/saw.conf with generated files.\n"
    return header + site


def local_main_config(directory: Path) -> str:
    """A whole nginx.conf that runs unprivileged in `directory`, in the foreground (Ctrl-C stops it)."""
    temp = {name: directory / "tmp" / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir(parents=True, exist_ok=True)
    user = "user root;\n" if os.geteuid() == 0 else ""  # root's workers would run as nobody: unreadable key
    return (
        f"# voicelog LOCAL DEVELOPMENT SAW: nginx {' '.join(['-p', str(directory), '-c', 'nginx.conf'])}\n"
        f"{user}daemon off;\nworker_processes 1;\npid {directory / 'nginx.pid'};\n"
        f"error_log {directory / 'error.log'} notice;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        f"  access_log {directory / 'access.log'};\n"
        f"  client_body_temp_path {temp['body']};\n  proxy_temp_path {temp['proxy']};\n"
        f"  fastcgi_temp_path {temp['fastcgi']};\n  uwsgi_temp_path {temp['uwsgi']};\n"
        f"  scgi_temp_path {temp['scgi']};\n"
        f"  include {directory / 'saw.conf'};\n"
        "}\n"
    )


def write_local_saw(directory: Path, *, owner: str, port: int = DEFAULT_SAW_PORT, upstream_port: int = 8000,
                    now: datetime | None = None) -> LocalSaw:
    """Generate the local SAW into `directory` (created 0700): CAs, certificates, CRL, PKCS#12, nginx config.

    The CAs' private keys are never written: nothing more can be issued or revoked with them, so a rerun
    makes a new SAW (and it must be registered again)."""
    now = now or datetime.now(UTC)
    directory = directory.resolve()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    saw_ca = _ca("voicelog LOCAL DEVELOPMENT SAW CA", now)
    server_ca = _ca("voicelog LOCAL DEVELOPMENT server CA", now)
    server = _leaf(server_ca, "localhost", now, server=True)
    client = _leaf(saw_ca, f"{LOCAL_LABEL_PREFIX} {owner}"[:64], now, server=False)
    crl = (x509.CertificateRevocationListBuilder().issuer_name(saw_ca[1].subject)
           .last_update(now - timedelta(minutes=5)).next_update(now + VALIDITY).sign(saw_ca[0], hashes.SHA256()))
    password = secrets.token_urlsafe(12)
    p12 = pkcs12.serialize_key_and_certificates(
        b"voicelog local SAW", client[0], client[1], [saw_ca[1]],
        serialization.BestAvailableEncryption(password.encode()))
    _write(directory / "saw-ca.crt", _pem(saw_ca[1]))
    _write(directory / "saw-ca.crl", crl.public_bytes(serialization.Encoding.PEM))
    _write(directory / "server-ca.crt", _pem(server_ca[1]))
    _write(directory / "server.crt", _pem(server[1]))
    _write(directory / "server.key", _key_pem(server[0]), 0o600)
    _write(directory / "saw.crt", _pem(client[1]))
    _write(directory / "saw.key", _key_pem(client[0]), 0o600)
    _write(directory / "saw.p12", p12, 0o600)
    _write(directory / "saw.p12.password", password.encode() + b"\n", 0o600)
    _write(directory / "saw.conf", local_site_config(directory, port=port, upstream_port=upstream_port).encode())
    _write(directory / "nginx.conf", local_main_config(directory).encode())
    return LocalSaw(directory, port, upstream_port, _pem(client[1]).decode(),
                    client[1].fingerprint(hashes.SHA256()).hex(), password)


def local_saw_label(owner: str) -> str:
    """The registry label of a local SAW: says what it is wherever SAWs are listed or audited."""
    return re.sub(r"[^A-Za-z0-9 ._:#/-]", "-", f"{LOCAL_LABEL_PREFIX}-{owner}")[:128]
