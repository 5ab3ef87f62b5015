"""Pinning the Fed-BioMed researcher's TLS certificate: the node owner decides whom the node trusts.

A stock Fed-BioMed node trusts whatever certificate the researcher's address serves when it
connects (trust on first use, every time). A fedpipe node trusts one certificate that its owner
pinned: a certificate file given once, or the served certificate after its owner confirmed the
fingerprint (obtained from the researcher's operator) once. The pin is stored under the node root
(one file per researcher address, mode 0600) and reused on later starts; a researcher that then
serves another certificate is refused until the owner pins the new one. The pinned certificate is
the only trust root of the gRPC channels, so gRPC itself refuses any other peer; the checks here
exist to say why, in one line, before any channel is opened.

As Fed-BioMed does, the researcher id is the certificate's subject ``O=`` attribute, and the node
must dial a name the certificate was made for (gRPC checks it: a certificate for ``127.0.0.1`` does
not accept ``localhost``). This module does not use grpc; ``names_match`` restates gRPC's rule.
"""

import datetime
import hashlib
import ipaddress
import logging
import re
import socket
import ssl
import threading
from pathlib import Path
from typing import Final

from attrs import field, frozen
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtensionOID, NameOID
from returns.result import Failure, Result, Success

from fedpipe.adapters.private_file import write_private

__all__ = [
    "CERTIFICATE_OPTION",
    "FINGERPRINT_OPTION",
    "PINS_DIR",
    "PinnedResearcher",
    "check_owner_choice",
    "fetch_certificate",
    "fingerprint",
    "names_match",
    "names_of",
    "parse_fingerprint",
    "pin_path",
    "pin_researcher",
    "researcher_id_of",
    "target_of",
    "wait_reachable",
]

FINGERPRINT_OPTION: Final = "--researcher-fingerprint"
CERTIFICATE_OPTION: Final = "--researcher-certificate"
PINS_DIR: Final = Path("fedbiomed") / "researchers"
_MAX_CERTIFICATE_FILE: Final = 1 << 20
_FINGERPRINT_HEX: Final = re.compile(r"[0-9a-f]{64}")


@frozen(kw_only=True)
class PinnedResearcher:
    """The researcher the node dials: its address, its pinned certificate (PEM) and researcher id."""

    host: str
    port: int
    certificate: bytes = field(repr=False)
    researcher_id: str

    @property
    def fingerprint(self) -> str:
        """``SHA256:<hex>`` of the pinned certificate."""
        return fingerprint(self.certificate)

    @property
    def address(self) -> str:
        """``host:port`` as gRPC dials it (an IPv6 host in brackets)."""
        return target_of(self.host, self.port)


def target_of(host: str, port: int) -> str:
    """``host:port``, with an IPv6 literal in brackets.

    >>> target_of("::1", 50051), target_of("127.0.0.1", 50051)
    ('[::1]:50051', '127.0.0.1:50051')
    """
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _certificate(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(Encoding.PEM)


def fingerprint(pem: bytes) -> str:
    """``SHA256:<64 lowercase hex>`` of the certificate's DER bytes. Raises ValueError if not a PEM cert."""
    der = _certificate(pem).public_bytes(Encoding.DER)
    return "SHA256:" + hashlib.sha256(der).hexdigest()


_fingerprint = fingerprint  # pin_researcher's ``fingerprint`` argument hides the function


def parse_fingerprint(text: str) -> str | None:
    """The ``SHA256:<hex>`` form of a fingerprint as people paste it, or None if it is not one.

    Accepts an optional ``SHA256:`` / ``sha256=`` prefix, upper or lower case, and colons.

    >>> parse_fingerprint("sha256:" + "AB:" * 31 + "AB") == "SHA256:" + "ab" * 32
    True
    >>> parse_fingerprint("SHA1:00") is None
    True
    """
    value = text.strip().lower()
    for prefix in ("sha256 fingerprint=", "sha256:", "sha256="):
        value = value.removeprefix(prefix)
    value = value.replace(":", "")
    return "SHA256:" + value if _FINGERPRINT_HEX.fullmatch(value) else None


def researcher_id_of(pem: bytes) -> str | None:
    """The researcher id a Fed-BioMed certificate names: its subject's first ``O=`` value."""
    names = _certificate(pem).subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    value = names[0].value if names else None
    return value if isinstance(value, str) and value else None


def _common_names(certificate: x509.Certificate) -> list[str]:
    values = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return [value for value in (attribute.value for attribute in values) if isinstance(value, str)]


def _alt_names(certificate: x509.Certificate) -> list[str]:
    try:
        extension = certificate.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    except x509.ExtensionNotFound:
        return []
    assert isinstance(extension.value, x509.SubjectAlternativeName)
    dns = extension.value.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in extension.value.get_values_for_type(x509.IPAddress)]
    return [*dns, *ips]


def names_of(pem: bytes) -> tuple[str, ...]:
    """The names a certificate is for: its subject CN, then its DNS and IP subject-alternative names."""
    certificate = _certificate(pem)
    return tuple(dict.fromkeys([*_common_names(certificate), *_alt_names(certificate)]))


def _looks_like_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _dns_match(entry: str, name: str) -> bool:
    # gRPC's rule: case-insensitive, one trailing dot ignored, "*." matches exactly one left label
    name = name.removesuffix(".").lower()
    entry = entry.lower()
    if entry.endswith("."):
        entry = entry[:-1]
    if not entry or not name:
        return False
    if entry == name:
        return True
    if len(entry) <= 2 or not entry.startswith("*."):
        return False
    dot = name.find(".")
    if dot < 0 or dot >= len(name) - 2:
        return False
    parent = name[dot + 1 :]
    if "." not in parent.removesuffix(".") or parent.endswith("."):
        return False  # no wildcard for a top-level domain
    return parent == entry[2:]


def names_match(pem: bytes, host: str) -> bool:
    """Whether gRPC accepts ``pem`` for the dialled ``host``.

    As gRPC checks it: when the certificate has subject-alternative names, only they count (an IP
    host must equal an IP or DNS entry exactly, a name matches a DNS entry, ``*.`` one label deep);
    without them, a name (never an IP) matches the CN.
    """
    certificate = _certificate(pem)
    alt = _alt_names(certificate)
    like_ip = _looks_like_ip(host)
    if alt:
        return any(entry == host if like_ip else _dns_match(entry, host) for entry in alt)
    return not like_ip and any(_dns_match(entry, host) for entry in _common_names(certificate))


def _unreachable(host: str, port: int, err: BaseException, timeout: float) -> str:
    if isinstance(err, ConnectionRefusedError):
        why = "connection refused"
    elif isinstance(err, socket.gaierror):
        why = "unknown host"
    elif isinstance(err, TimeoutError):
        why = f"no answer within {timeout:g} s"
    elif isinstance(err, ssl.SSLError):
        why = "the TLS handshake failed (is this the researcher's gRPC port?)"
    elif isinstance(err, OSError) and err.strerror:
        why = err.strerror[0].lower() + err.strerror[1:]
    else:
        why = type(err).__name__
    return f"cannot reach the researcher at {target_of(host, port)}: {why}"


def fetch_certificate(host: str, port: int, timeout: float) -> Result[bytes, str]:
    """The certificate (PEM) that ``host:port`` serves, unverified; or a one-line reason it could not be read.

    Only for comparing with a pin or showing its fingerprint: nothing is trusted because of it.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # read, never trust: the pin decides
    context.set_alpn_protocols(["h2"])  # as gRPC offers it
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=None if _looks_like_ip(host) else host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ValueError, UnicodeError) as err:
        return Failure(_unreachable(host, port, err, timeout))
    if not der:
        return Failure(f"the researcher at {target_of(host, port)} served no certificate")
    try:
        return Success(_pem(x509.load_der_x509_certificate(der)))
    except ValueError:
        return Failure(f"the researcher at {target_of(host, port)} served a certificate that does not parse")


def wait_reachable(
    host: str, port: int, stop: threading.Event, *, log: logging.Logger, retry_delay: float = 2.0
) -> bool:
    """Wait until ``host:port`` accepts TCP connections (True) or ``stop`` is set (False).

    Fed-BioMed nodes may start before the researcher listens; this logs one line when the first
    attempt fails, none per retry.
    """
    first = True
    while not stop.is_set():
        try:
            with socket.create_connection((host, port), timeout=max(retry_delay, 1.0)):
                pass
        except OSError as err:
            if first:
                log.info("%s; waiting for it", _unreachable(host, port, err, max(retry_delay, 1.0)))
                first = False
            stop.wait(retry_delay)
            continue
        if not first:
            log.info("the researcher at %s is reachable", target_of(host, port))
        return True
    return False


def pin_path(root: Path, host: str, port: int) -> Path:
    """Where the pin of the researcher at ``host:port`` is stored under the node root."""
    safe = re.sub(r"[^A-Za-z0-9.-]", "_", host)
    return Path(root) / PINS_DIR / f"{safe}_{port}.pem"


def _read_certificate_file(path: Path) -> Result[bytes, str]:
    try:
        with path.open("rb") as fh:
            data = fh.read(_MAX_CERTIFICATE_FILE + 1)
    except OSError as err:
        return Failure(f"cannot read the researcher certificate {path}: {err.strerror or type(err).__name__}")
    if len(data) > _MAX_CERTIFICATE_FILE:
        return Failure(f"the researcher certificate {path} is over {_MAX_CERTIFICATE_FILE} bytes")
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        return Failure(f"the researcher certificate {path} is not a PEM certificate")
    if len(certificates) != 1:
        return Failure(
            f"the researcher certificate {path} holds {len(certificates)} certificates: "
            "give the researcher's own certificate only"
        )
    return Success(_pem(certificates[0]))


def _served_differs(where: str, served: str, pinned: str) -> str:
    return f"the researcher at {where} serves certificate {served}, not {pinned}"


def _check_certificate(pem: bytes, host: str, where: str) -> Result[str, str]:
    """The researcher id of a certificate fit to be pinned for ``host``, or why it is not."""
    if not names_match(pem, host):
        names = ", ".join(names_of(pem)) or "no name"
        return Failure(
            f"the researcher's certificate is for {names}, not {host}: dial the researcher by that name"
        )
    certificate = _certificate(pem)
    now = datetime.datetime.now(datetime.UTC)
    if now > certificate.not_valid_after_utc:
        return Failure(
            f"the researcher's certificate at {where} expired on {certificate.not_valid_after_utc:%Y-%m-%d}"
        )
    if now < certificate.not_valid_before_utc:
        return Failure(
            f"the researcher's certificate at {where} is valid only from "
            f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (is this machine's clock right?)"
        )
    researcher_id = researcher_id_of(pem)
    if researcher_id is None:
        return Failure(f"the researcher's certificate at {where} names no researcher id (no O= attribute)")
    return Success(researcher_id)


def _stored_pin(path: Path) -> Result[bytes | None, str]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Success(None)
    except OSError as err:
        return Failure(f"cannot read the stored researcher pin {path}: {err.strerror or type(err).__name__}")
    try:
        return Success(_pem(_certificate(data)))
    except ValueError:
        return Failure(
            f"the stored researcher pin {path} is not a certificate: pin the researcher again "
            f"({FINGERPRINT_OPTION} or {CERTIFICATE_OPTION})"
        )


def _owner_choice(
    certificate_file: Path | None, fingerprint: str | None
) -> Result[tuple[str, str] | None, str]:
    """(fingerprint, how messages name it) of what the owner vouches for now; None when nothing is given."""
    confirmed = None
    if fingerprint is not None:
        confirmed = parse_fingerprint(fingerprint)
        if confirmed is None:
            return Failure(f"{fingerprint!r} is not a SHA-256 fingerprint (SHA256: and 64 hex digits)")
    if certificate_file is None:
        return Success(None if confirmed is None else (confirmed, f"the confirmed {confirmed}"))
    read = _read_certificate_file(Path(certificate_file))
    if not isinstance(read, Success):
        return Failure(read.failure())
    of_file = _fingerprint(read.unwrap())
    if confirmed is not None and confirmed != of_file:
        return Failure(
            f"the researcher certificate {certificate_file} has fingerprint {of_file}, not the given {confirmed}"
        )
    return Success((of_file, f"{of_file} of {certificate_file}"))


def check_owner_choice(certificate_file: Path | None, fingerprint: str | None) -> Result[None, str]:
    """Check what the owner gives to pin, without the network: a readable certificate, a fingerprint.

    The same one-line failures as ``pin_researcher`` for a certificate file that cannot be read
    or is not one certificate, a text that is not a SHA-256 fingerprint, or a file whose
    fingerprint is not the given one; so a node can refuse them before it waits for the researcher.
    """
    choice = _owner_choice(certificate_file, fingerprint)
    return Success(None) if isinstance(choice, Success) else Failure(choice.failure())


def pin_researcher(
    root: Path,
    host: str,
    port: int,
    *,
    certificate_file: Path | None = None,
    fingerprint: str | None = None,
    timeout: float = 5.0,
) -> Result[PinnedResearcher, str]:
    """The researcher at ``host:port`` with the certificate its owner pinned, after checking what it serves.

    Policy: a given ``certificate_file`` is pinned; a given ``fingerprint`` must be that of the
    served certificate, which is then pinned; either is stored under ``root`` (0600, atomically)
    and replaces an earlier pin. With neither, the stored pin is used, and a served certificate that
    differs is refused naming both fingerprints. With nothing stored either, the node is refused
    with the served fingerprint and how to confirm it. The pinned certificate must be for ``host``
    (gRPC's name check), valid now, and name the researcher id (``O=``). Every failure is one line.
    """
    where = target_of(host, port)
    choice = _owner_choice(certificate_file, fingerprint)
    if not isinstance(choice, Success):
        return Failure(choice.failure())
    vouched = choice.unwrap()
    fetched = fetch_certificate(host, port, timeout)
    if not isinstance(fetched, Success):
        return Failure(fetched.failure())
    served = fetched.unwrap()
    served_fingerprint = _fingerprint(served)
    checked = _check_certificate(served, host, where)
    if not isinstance(checked, Success):
        return Failure(checked.failure())
    path = pin_path(root, host, port)
    if vouched is not None:
        if vouched[0] != served_fingerprint:
            return Failure(_served_differs(where, served_fingerprint, vouched[1]))
        stored = _stored_pin(path)
        if not (isinstance(stored, Success) and stored.unwrap() == served):
            try:
                write_private(path, served.decode("ascii").rstrip("\n"))
            except OSError as err:
                return Failure(
                    f"cannot store the researcher pin {path}: {err.strerror or type(err).__name__}"
                )
    else:
        stored = _stored_pin(path)
        if not isinstance(stored, Success):
            return Failure(stored.failure())
        pin = stored.unwrap()
        if pin is None:
            return Failure(
                f"the researcher at {where} is not pinned yet: it serves certificate "
                f"{served_fingerprint} (researcher {checked.unwrap()}); check this fingerprint with "
                f"the researcher's operator, then confirm it with {FINGERPRINT_OPTION} "
                f"{served_fingerprint} (or give its certificate with {CERTIFICATE_OPTION} FILE)"
            )
        if _fingerprint(pin) != served_fingerprint:
            return Failure(
                _served_differs(where, served_fingerprint, f"the pinned {_fingerprint(pin)}")
                + f"; if its certificate was renewed, confirm the new one with {FINGERPRINT_OPTION}"
            )
    return Success(PinnedResearcher(host=host, port=port, certificate=served, researcher_id=checked.unwrap()))
