"""
TLS for the service: a private certificate authority, the certificates it
issues, and the Twisted TLS options both sides use.

The manager makes the service CA at its first start (L{ServiceCA.loadOrCreate}:
C{ca.key}, mode 0600, and C{ca.pem} in its state directory), issues itself
a certificate at every start and one per node when the node is created
(L{ServiceCA.issue}); the node gets its key, its certificate and the CA
certificate through its context (L{nodeContext}).  Keys are EC P-256.

Who verifies whom:

  - the manager calls an agent over https and accepts only a certificate
    issued by the service CA for that node's name (L{ClientTLS}: the node's
    VM name, whatever address it is reached at);
  - the agent accepts only clients presenting a certificate of the service CA
    (mutual TLS, L{ServerTLS} with C{clientCA}): the manager presents its
    own, a peer agent its node's;
  - whoever calls the manager's C{ssl:} endpoint can verify it with
    C{ca.pem} (e.g. C{curl --cacert ca.pem}).

Key material is never logged, never put in a C{repr}, never on a command
line: it is passed in memory or in 0600 files.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import endpoints, ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from conpaassql.common.files import write_file_atomic, write_secret_file

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "CONTEXT_CA_CERT",
    "CONTEXT_CERT",
    "CONTEXT_KEY",
    "ClientTLS",
    "Credential",
    "PeerTLS",
    "ServerTLS",
    "ServiceCA",
    "ServiceTLS",
    "TLSFileError",
    "nodeContext",
    "readCredential",
]

CA_KEY_FILE = "ca.key"
CA_CERT_FILE = "ca.pem"

#: The node context keys (base64 of the PEM text: OpenNebula CONTEXT values
#: cannot hold line breaks).
CONTEXT_CERT = "AGENT_TLS_CERT_BASE64"
CONTEXT_KEY = "AGENT_TLS_KEY_BASE64"
CONTEXT_CA_CERT = "CA_CERT_BASE64"

CA_DAYS = 3650
LEAF_DAYS = 730
#: Certificates start being valid this long before they are made (clocks of
#: nodes that are a little behind).
BACKDATE = datetime.timedelta(hours=1)


class TLSFileError(Exception):
    """A certificate or key file is missing, unreadable, invalid or too open."""


@dataclass(frozen=True)
class Credential:
    """A certificate and its private key, PEM.  The key is never shown."""

    certificate: bytes
    key: bytes = field(repr=False)

    def privateCertificate(self) -> ssl.PrivateCertificate:
        return ssl.PrivateCertificate.loadPEM(self.certificate + b"\n" + self.key)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _keyPEM(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _sans(names: Iterable[str]) -> list[x509.GeneralName]:
    """DNS names and IP addresses, each once, in order."""
    out: list[x509.GeneralName] = []
    for name in dict.fromkeys(n.strip().strip("[]") for n in names if n and n.strip()):
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def _keyUsage(*, ca: bool) -> x509.KeyUsage:
    """A CA signs certificates and CRLs; a leaf signs and agrees keys (ECDHE)."""
    return x509.KeyUsage(
        digital_signature=True, key_cert_sign=ca, crl_sign=ca, key_agreement=not ca,
        content_commitment=False, key_encipherment=False, data_encipherment=False,
        encipher_only=False, decipher_only=False,
    )


class ServiceCA:
    """
    The service's certificate authority.

    @ivar certificate: the CA certificate, PEM.
    """

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self._key = key
        self._cert = cert
        self.certificate = cert.public_bytes(serialization.Encoding.PEM)

    def __repr__(self) -> str:
        return f"ServiceCA({self._cert.subject.rfc4514_string()!r})"

    @classmethod
    def create(cls, commonName: str, days: int = CA_DAYS) -> ServiceCA:
        """A new CA (in memory)."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "conpaassql"),
            x509.NameAttribute(NameOID.COMMON_NAME, commonName),
        ])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_keyUsage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @classmethod
    def loadOrCreate(cls, directory: str, commonName: str) -> ServiceCA:
        """
        The CA kept in C{directory} (C{ca.key}, C{ca.pem}), made there (key
        0600) if neither file exists.  Small blocking file I/O, at start.

        @raise TLSFileError: only one of the files exists, one is invalid,
            or the key file is readable by others.
        """
        keyPath = os.path.join(directory, CA_KEY_FILE)
        certPath = os.path.join(directory, CA_CERT_FILE)
        haveKey, haveCert = os.path.exists(keyPath), os.path.exists(certPath)
        if not haveKey and not haveCert:
            ca = cls.create(commonName)
            write_secret_file(keyPath, _keyPEM(ca._key).decode("ascii"))
            write_file_atomic(certPath, ca.certificate.decode("ascii"), mode=0o644)
            return ca
        if haveKey != haveCert:
            missing = certPath if haveKey else keyPath
            raise TLSFileError(f"{missing} is missing (remove both CA files to make a new CA)")
        keyPEM = _readPrivate(keyPath)
        cert = _loadCertificate(certPath)
        try:
            key = serialization.load_pem_private_key(keyPEM, password=None)
        except ValueError:
            raise TLSFileError(f"{keyPath} is not a PEM private key") from None
        spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or \
                key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
            raise TLSFileError(f"{keyPath} is not the key of {certPath}")
        return cls(key, cert)

    def issue(self, commonName: str, names: Iterable[str], days: int = LEAF_DAYS) -> Credential:
        """
        A new key and a certificate for it, for a server and a client
        (serverAuth and clientAuth), with C{names} (DNS names or IP addresses)
        as its subjectAltName.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        sans = _sans(names)
        if not sans:
            raise ValueError("a certificate needs at least one name")
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "conpaassql"),
                x509.NameAttribute(NameOID.COMMON_NAME, commonName[:64]),
            ]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(min(now + datetime.timedelta(days=days),
                                 self._cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_keyUsage(ca=False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                       ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        return Credential(cert.public_bytes(serialization.Encoding.PEM), _keyPEM(key))


def nodeContext(ca: ServiceCA, credential: Credential) -> dict[str, str]:
    """The context keys that give a node its TLS files (base64 of the PEM text)."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return {
        CONTEXT_CERT: b64(credential.certificate),
        CONTEXT_KEY: b64(credential.key),
        CONTEXT_CA_CERT: b64(ca.certificate),
    }


def contextFiles(context: Mapping[str, str]) -> dict[str, bytes] | None:
    """
    The PEM texts a node context carries (C{"cert"}, C{"key"}, C{"ca"}), or
    L{None} if it carries none.

    @raise ValueError: only some of the keys are there, or one is not base64.
    """
    keys = {"cert": CONTEXT_CERT, "key": CONTEXT_KEY, "ca": CONTEXT_CA_CERT}
    present = [k for k in keys.values() if context.get(k)]
    if not present:
        return None
    if len(present) != len(keys):
        raise ValueError(f"the TLS context needs all of {', '.join(keys.values())}")
    try:
        return {what: base64.b64decode(context[k], validate=True) for what, k in keys.items()}
    except ValueError:
        raise ValueError("a TLS context value is not base64") from None


# -- files


def _readPrivate(path: str) -> bytes:
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            data = f.read(1024 * 1024)
    except OSError as e:
        raise TLSFileError(f"cannot read {path}: {e.strerror}") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise TLSFileError(f"{path} holds a private key: it must be mode 0600 "
                           f"(it is {stat.S_IMODE(st.st_mode):04o})")
    return data


def _readPublic(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(1024 * 1024)
    except OSError as e:
        raise TLSFileError(f"cannot read {path}: {e.strerror}") from None


def _loadCertificate(path: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_readPublic(path))
    except ValueError:
        raise TLSFileError(f"{path} is not a PEM certificate") from None


def readCredential(certPath: str, keyPath: str) -> Credential:
    """
    A certificate and its key from files (the key file must be 0600).

    @raise TLSFileError: a file is unreadable, invalid or too open, or the
        key is not the certificate's.
    """
    cred = Credential(_readPublic(certPath), _readPrivate(keyPath))
    try:
        cred.privateCertificate()
    except Exception:  # noqa: BLE001 - OpenSSL's errors for a bad key or a mismatch vary
        raise TLSFileError(f"{keyPath} and {certPath} are not a matching PEM key "
                           "and certificate") from None
    return cred


def readCertificate(path: str) -> bytes:
    """A PEM certificate file's text, checked.  @raise TLSFileError: if it is not one."""
    _loadCertificate(path)
    return _readPublic(path)


# -- Twisted options


def _minimum() -> dict[str, Any]:
    return {"raiseMinimumTo": ssl.TLSVersion.TLSv1_2}


@dataclass(frozen=True)
class ServerTLS:
    """
    A TLS server's certificate and, for mutual TLS, the CA its clients'
    certificates must be issued by.
    """

    credential: Credential
    clientCA: bytes | None = None

    def options(self) -> ssl.CertificateOptions:
        pc = self.credential.privateCertificate()
        caCerts = None
        if self.clientCA is not None:
            caCerts = [ssl.Certificate.loadPEM(self.clientCA).original]
        return ssl.CertificateOptions(
            privateKey=pc.privateKey.original, certificate=pc.original,
            verify=caCerts is not None, caCerts=caCerts, requireCertificate=caCerts is not None,
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        )


@implementer(IPolicyForHTTPS)
class ClientTLS:
    """
    How a client verifies a server: by C{trustRoot} (a PEM CA certificate)
    alone, and by C{hostname} (a DNS name or IP address the certificate must
    name) whatever host the URL has; with C{clientCertificate} it presents
    that credential (mutual TLS).  An C{IPolicyForHTTPS} for C{Agent}.
    """

    def __init__(self, trustRoot: bytes, hostname: str | None = None,
                 clientCertificate: Credential | None = None) -> None:
        self.trustRoot = trustRoot
        self.hostname = hostname
        self.clientCertificate = clientCertificate
        self._trust = ssl.Certificate.loadPEM(trustRoot)
        self._client = clientCertificate.privateCertificate() if clientCertificate else None

    def __repr__(self) -> str:
        return f"ClientTLS(hostname={self.hostname!r}, client={self._client is not None})"

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        name = self.hostname or hostname.decode("ascii")
        return ssl.optionsForClientTLS(
            name, trustRoot=self._trust, clientCertificate=self._client,
            extraCertificateOptions=_minimum(),
        )



# -- endpoints


def _fields(description: str) -> tuple[str, dict[str, str]]:
    """An endpoint string's type and its C{key=value} arguments (unescaped)."""
    parts = re.split(r"(?<!\\):", description)
    kwargs = {}
    for part in parts[1:]:
        key, eq, value = part.partition("=")
        if eq:
            kwargs[key] = value.replace("\\:", ":")
    return parts[0], kwargs


def isTLSEndpoint(description: str) -> bool:
    """Whether C{description} is an C{ssl:} endpoint."""
    return _fields(description)[0] == "ssl"


def listenInterface(description: str) -> str | None:
    """The C{interface} of an endpoint string, if it has one."""
    return _fields(description)[1].get("interface")


def plainOffLocalhost(description: str) -> bool:
    """
    Whether C{description} serves plain TCP beyond this host (a C{tcp:} or
    C{tcp6:} endpoint without a loopback C{interface}).
    """
    kind, kwargs = _fields(description)
    if kind not in ("tcp", "tcp6"):
        return False
    try:
        return not ipaddress.ip_address(kwargs.get("interface", "")).is_loopback
    except ValueError:
        return True


def serverEndpoint(reactor: Any, description: str, tls: ServerTLS | None,
                   factory: Any) -> tuple[Any, Any]:
    """
    The endpoint to listen on for C{description} and the factory to give it.
    An C{ssl:} endpoint without its own C{privateKey=} is served with
    C{tls} (as C{tcp:} with the same arguments, wrapped in TLS); any other
    description is Twisted's as it is.

    @raise ValueError: an C{ssl:} endpoint without a certificate of its own
        and no C{tls}.
    """
    kind, kwargs = _fields(description)
    if kind == "ssl" and "privateKey" not in kwargs:
        if tls is None:
            raise ValueError(f"{description}: an ssl: endpoint needs a certificate "
                             "(the service's TLS settings, or privateKey=)")
        wrapped = TLSMemoryBIOFactory(tls.options(), False, factory)  # type: ignore[arg-type]
        return endpoints.serverFromString(reactor, "tcp" + description[3:]), wrapped
    return endpoints.serverFromString(reactor, description), factory


@implementer(IPolicyForHTTPS)
class PeerTLS:
    """
    How an agent calls a peer agent (the slave pulls the master's snapshot):
    the peer's certificate must be issued by the service CA (whatever its
    name: the slave knows the master by address only, and node certificates
    name nodes, not addresses), and the agent presents its own certificate.
    """

    def __init__(self, trustRoot: bytes, credential: Credential) -> None:
        self._options = ServerTLS(credential, clientCA=trustRoot).options()

    def __repr__(self) -> str:
        return "PeerTLS()"

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        # CertificateOptions with verify=True checks the chain to the CA;
        # TLSMemoryBIOFactory takes it as a context factory.
        return self._options


class ServiceTLS:
    """
    The manager's side: its CA and its own credential, what each node is
    given, and how each node's agent is called.
    """

    def __init__(self, ca: ServiceCA, credential: Credential) -> None:
        self.ca = ca
        self.credential = credential

    def __repr__(self) -> str:
        return f"ServiceTLS({self.ca!r})"

    def nodeContext(self, name: str) -> dict[str, str]:
        """A new key and certificate for node C{name}, as context keys."""
        return nodeContext(self.ca, self.ca.issue(name, [name]))

    def agentPolicy(self, name: str) -> ClientTLS:
        """How the agent of node C{name} is called: by the CA, its name, and our certificate."""
        return ClientTLS(self.ca.certificate, hostname=name, clientCertificate=self.credential)

    def serverTLS(self) -> ServerTLS:
        """The manager's own C{ssl:} endpoints (no client certificate asked)."""
        return ServerTLS(self.credential)
