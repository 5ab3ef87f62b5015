"""argparse types of the ``fedpipe`` commands: a bad value is argparse's one-line usage error.

Each takes the option's text and returns its value, or raises ``argparse.ArgumentTypeError`` with
a message that says what was expected and shows what was given.
"""

import argparse
import json
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "host_port",
    "http_url",
    "json_object",
    "non_negative_int",
    "port_number",
    "positive_float",
    "positive_int",
    "seconds",
]


def positive_int(text: str) -> int:
    """An integer of at least 1 (argparse type).

    >>> positive_int("3")
    3
    >>> positive_int("0")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: must be a whole number of at least 1, not '0'
    """
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0 (argparse type).

    >>> positive_float("0.5")
    0.5
    """
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number above 0, not {text!r}")
    return value


def port_number(text: str) -> int:
    """A TCP port, 1 to 65535 (argparse type).

    >>> port_number("8844")
    8844
    >>> port_number("99999")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: a port is a number from 1 to 65535, not '99999'
    """
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"a port is a number from 1 to 65535, not {text!r}")
    return int(text)


def http_url(text: str) -> str:
    """An ``http://`` or ``https://`` URL with a host (argparse type).

    >>> http_url("http://127.0.0.1:8844")
    'http://127.0.0.1:8844'
    >>> http_url("127.0.0.1:8844")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: must be an http:// or https:// URL, e.g. http://127.0.0.1:8844, not '127.0.0.1:8844'
    """
    try:
        parts = urlsplit(text)
        valid_port = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        valid_port = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not valid_port:
        raise argparse.ArgumentTypeError(
            f"must be an http:// or https:// URL, e.g. http://127.0.0.1:8844, not {text!r}"
        )
    return text


def host_port(text: str) -> str:
    """``HOST:PORT`` (``[v6]:PORT`` too), as a gRPC address (argparse type).

    >>> host_port("127.0.0.1:50051")
    '127.0.0.1:50051'
    """
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not (sep and host and "/" not in host and port.isdigit() and 0 < int(port) < 65536):
        raise argparse.ArgumentTypeError(f"must be HOST:PORT, e.g. 127.0.0.1:50051, not {text!r}")
    return text


def json_object(text: str) -> dict[str, Any]:
    """A JSON object (argparse type).

    >>> json_object('{"standardize": true}')
    {'standardize': True}
    >>> json_object("[1,2]")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: must be a JSON object, e.g. {"standardize": true}, not '[1,2]'
    """
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f'must be a JSON object, e.g. {{"standardize": true}}, not {text!r}')
    return value


def non_negative_int(text: str) -> int:
    """An integer of at least 0, such as a seed (argparse type).

    >>> non_negative_int("0")
    0
    >>> non_negative_int("-1")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: must be a whole number of at least 0, not '-1'
    """
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 0, not {text!r}")
    return value


def seconds(text: str, maximum: float = 3600.0) -> float:
    """A number of seconds from 0 to ``maximum`` (argparse type).

    >>> seconds("30")
    30.0
    >>> seconds("-1")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: must be a number of seconds from 0 to 3600, not '-1'
    """
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= maximum:
        raise argparse.ArgumentTypeError(f"must be a number of seconds from 0 to {maximum:g}, not {text!r}")
    return value
