"""Request bodies read within a size limit while streaming, and strict JSON in and out of the board.

``read_body`` refuses a declared ``Content-Length`` over the limit before reading a byte, and a
body that grows past it as soon as it does: the server never holds more than ``limit`` bytes of
one body. ``strict_json`` accepts what any JSON reader accepts back: UTF-8, no NaN or
infinities, no lone surrogates (in keys or values), at most ``MAX_DEPTH`` nested containers;
``canonical`` is the compact UTF-8 text the board stores and serves verbatim, so what it stores
it can always serve. ``monitor_json`` is the lenient reading of metric events: NaN, Infinity
and -Infinity become the strings "NaN", "Infinity" and "-Infinity". ``json_object`` reads a
route's body with one of them and answers a refusal the same way on every route (413, 400).
"""

import json
from collections.abc import Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

__all__ = [
    "MAX_DEPTH",
    "BadJson",
    "TooLarge",
    "canonical",
    "json_error",
    "json_object",
    "monitor_json",
    "read_body",
    "strict_json",
]

MAX_DEPTH = 64


class TooLarge(Exception):
    """The body is (or says it is) longer than the route allows."""


class BadJson(ValueError):
    """The body is not strict JSON (the message says why, in one line, without echoing input)."""


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body of ``request``, at most ``limit`` bytes; TooLarge as soon as it is longer.

    Starlette's ``ClientDisconnect`` passes through (the caller answers nothing useful anyway).
    """
    declared = request.headers.get("content-length")
    if declared is not None and (not (declared.isascii() and declared.isdigit()) or int(declared) > limit):
        raise TooLarge
    body = bytearray()
    async for chunk in request.stream():
        if len(body) + len(chunk) > limit:
            raise TooLarge
        body += chunk
    return bytes(body)


def _reject_constant(name: str) -> Any:
    raise BadJson(f"{name} is not JSON")


def _keep_constant(name: str) -> str:
    return name  # "NaN", "Infinity" or "-Infinity": the names json.loads hands over


def _depth_within(value: Any, limit: int) -> bool:
    # iterative, so that checking cannot itself run out of stack
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return False
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return True


def _parse(body: bytes, parse_constant: Any, max_depth: int) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadJson("the body is not UTF-8") from None
    try:
        value = json.loads(text, parse_constant=parse_constant)
    except RecursionError:
        raise BadJson(f"JSON nested more than {max_depth} deep") from None
    except BadJson:
        raise
    except ValueError:  # JSONDecodeError, or an integer of more than 4300 digits
        raise BadJson("the body is not JSON") from None
    # fewer opening brackets than the limit cannot nest deeper: skip the walk for most bodies
    if body.count(b"[") + body.count(b"{") > max_depth and not _depth_within(value, max_depth):
        raise BadJson(f"JSON nested more than {max_depth} deep")
    return value


def canonical(value: Any) -> bytes:
    """Compact UTF-8 JSON of ``value``; BadJson when it has no such text (a lone surrogate, NaN).

    >>> canonical({"a": [1, "é"]}).decode()
    '{"a":[1,"é"]}'
    """
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        raise BadJson("the body has a lone surrogate") from None
    except (ValueError, TypeError, RecursionError):
        raise BadJson("the body is not strict JSON") from None


def strict_json(body: bytes, max_depth: int = MAX_DEPTH) -> Any:
    """The value of ``body`` if it is strict JSON (see the module docstring), else BadJson.

    >>> strict_json(b'{"a": 1}')
    {'a': 1}
    >>> strict_json(b'[NaN]')
    Traceback (most recent call last):
    ...
    fedpipe.server.bodies.BadJson: NaN is not JSON
    """
    value = _parse(body, _reject_constant, max_depth)
    canonical(value)  # refuses lone surrogates (from \\ud800 escapes) and 1e400 (read as inf)
    return value


def monitor_json(body: bytes, max_depth: int = MAX_DEPTH) -> Any:
    """The value of a metric event body: strict JSON except that NaN/Infinity/-Infinity become strings.

    >>> monitor_json(b'{"loss": NaN, "x": -Infinity}')
    {'loss': 'NaN', 'x': '-Infinity'}
    """
    value = _parse(body, _keep_constant, max_depth)
    canonical(value)
    return value


def json_error(status: int, message: str) -> JSONResponse:
    """``{"error": message}`` with ``status``: how the server's routes refuse a request."""
    return JSONResponse({"error": message}, status_code=status)


async def json_object(
    request: Request, limit: int, parse: Callable[[bytes], Any] = strict_json
) -> dict[str, Any] | Response:
    """The JSON object ``request`` carries (read by ``parse``, at most ``limit`` bytes), else the answer.

    The answer is 413 when the body is over ``limit``, 400 when ``parse`` refuses it (its one-line
    reason) or it is not an object, and a bare 400 when the client hung up while sending it.
    """
    try:
        value = parse(await read_body(request, limit))
    except TooLarge:
        return json_error(413, f"the body is limited to {limit} bytes")
    except BadJson as err:
        return json_error(400, str(err))
    except ClientDisconnect:
        return Response(status_code=400)
    return value if isinstance(value, dict) else json_error(400, "expected a JSON object")
