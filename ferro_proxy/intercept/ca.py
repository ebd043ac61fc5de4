"""The interception CA: created on first start (or loaded from files, e.g. a Kubernetes
Secret) and used to mint a leaf certificate per intercepted host.

Keys are EC P-256: every TLS stack legacy apps use accepts them and minting is cheap.
Leaf certificates share one key and are cached per host as ready `ssl.SSLContext`s, so a
host costs one signature on its first CONNECT and nothing afterwards (until it expires).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
CA_VALIDITY = datetime.timedelta(days=3650)
LEAF_VALIDITY = datetime.timedelta(days=30)
# A leaf is minted again this long before it expires.
LEAF_RENEW_MARGIN = datetime.timedelta(days=1)
CLOCK_SKEW = datetime.timedelta(hours=1)


class CAError(Exception):
    """The CA cannot be created or loaded; the message says which file and why."""


def default_ca_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "ferro-proxy" / "ca"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_private(path: Path, data: bytes) -> None:
    """Write a key file readable by its owner only (0600), never briefly wider."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(path, 0o600)


def create_ca(common_name: str = "ferro-proxy interception CA") -> tuple[bytes, bytes]:
    """A new self-signed CA: (certificate PEM, private key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ferro-proxy"),
        ]
    )
    now = _now()
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


@dataclass
class _Leaf:
    context: ssl.SSLContext
    renew_after: datetime.datetime


class CertificateAuthority:
    """A loaded CA that mints (and caches) server contexts for intercepted hosts."""

    def __init__(self, cert_pem: bytes, key_pem: bytes, source: str = "") -> None:
        try:
            self.cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError as exc:
            raise CAError(f"{source or 'CA certificate'}: not a PEM certificate ({exc})") from None
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise CAError(f"{source or 'CA key'}: not an unencrypted PEM private key ({exc})") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey | _rsa_key_type()):
            raise CAError(f"{source or 'CA key'}: only EC and RSA CA keys are supported")
        if key.public_key().public_numbers() != self.cert.public_key().public_numbers():
            raise CAError(f"{source or 'CA'}: the private key does not belong to the certificate")
        self.key = key
        self.cert_pem = self.cert.public_bytes(serialization.Encoding.PEM)
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())
        self._leaf_key_pem = self._leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self._leaves: dict[str, _Leaf] = {}
        self._lock = threading.Lock()
        self._ski = x509.SubjectKeyIdentifier.from_public_key(self.cert.public_key())

    # ------------------------------------------------------------ loading

    @classmethod
    def load_or_create(
        cls,
        ca_dir: str | os.PathLike[str] | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
    ) -> CertificateAuthority:
        """Load `cert_file`/`key_file` when given (both or neither); else `ca_dir`'s pair,
        created there on first use (key 0600)."""
        if bool(cert_file) != bool(key_file):
            raise CAError("intercept.ca_cert and intercept.ca_key must be set together")
        if cert_file and key_file:
            return cls(_read(cert_file), _read(key_file), source=f"{cert_file} / {key_file}")
        directory = Path(ca_dir) if ca_dir else default_ca_dir()
        cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
        if not cert_path.exists() and not key_path.exists():
            init_ca_dir(directory)
        return cls(_read(str(cert_path)), _read(str(key_path)), source=str(directory))

    # ------------------------------------------------------------ minting

    def mint(self, host: str) -> tuple[bytes, datetime.datetime]:
        """A leaf certificate PEM (leaf then CA) for `host`, and when it expires."""
        now = _now()
        expires = now + LEAF_VALIDITY
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            san = x509.DNSName(host)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])]))
            .issuer_name(self.cert.subject)
            .public_key(self._leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(expires)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_encipherment=False,
                    content_commitment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(self._ski), critical=False
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._leaf_key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM) + self.cert_pem, expires

    def server_context(self, host: str) -> ssl.SSLContext:
        """The TLS server context presenting a leaf for `host` (minted once, then cached)."""
        host = host.lower().rstrip(".")
        now = _now()
        leaf = self._leaves.get(host)
        if leaf is not None and now < leaf.renew_after:
            return leaf.context
        with self._lock:
            leaf = self._leaves.get(host)
            if leaf is not None and now < leaf.renew_after:
                return leaf.context
            chain_pem, expires = self.mint(host)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.set_alpn_protocols(["http/1.1"])
            _load_chain(context, chain_pem, self._leaf_key_pem)
            self._leaves[host] = _Leaf(context, expires - LEAF_RENEW_MARGIN)
            return context

    @property
    def cached_hosts(self) -> list[str]:
        return sorted(self._leaves)


def init_ca_dir(directory: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Create a CA in `directory` (cert 0644, key 0600). Refuses to overwrite unless `force`."""
    directory = Path(directory)
    cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
    if not force and (cert_path.exists() or key_path.exists()):
        raise CAError(f"{directory} already holds a CA; pass --force to replace it")
    cert_pem, key_pem = create_ca()
    _write_private(key_path, key_pem)
    cert_path.write_bytes(cert_pem)
    os.chmod(cert_path, 0o644)
    return directory


BUNDLE_FILE = "bundle.pem"


def system_roots() -> bytes:
    """The system's trusted roots (or certifi's when the system has none)."""
    cafile = ssl.get_default_verify_paths().cafile
    if cafile and os.path.isfile(cafile):
        return Path(cafile).read_bytes()
    try:
        import certifi
    except ImportError:
        return b""
    return Path(certifi.where()).read_bytes()


def write_bundle(ca: CertificateAuthority, directory: str | os.PathLike[str]) -> Path:
    """`bundle.pem`: the system roots plus this CA, for SSL_CERT_FILE / REQUESTS_CA_BUNDLE."""
    path = Path(directory) / BUNDLE_FILE
    roots = system_roots()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(roots + (b"\n" if roots and not roots.endswith(b"\n") else b"") + ca.cert_pem)
        os.chmod(tmp, 0o644)
        tmp.replace(path)
    except OSError as exc:
        raise CAError(f"cannot write {path}: {exc.strerror}") from None
    return path


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CAError(f"cannot read {path}: {exc.strerror}") from None


def _rsa_key_type() -> type:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.RSAPrivateKey


def _load_chain(context: ssl.SSLContext, chain_pem: bytes, key_pem: bytes) -> None:
    """`load_cert_chain` only reads files: write both to a private temporary directory."""
    with tempfile.TemporaryDirectory(prefix="ferro-leaf-") as tmp:
        cert_path, key_path = Path(tmp) / "leaf.pem", Path(tmp) / "leaf-key.pem"
        cert_path.write_bytes(chain_pem)
        _write_private(key_path, key_pem)
        context.load_cert_chain(cert_path, key_path)
