"""A streaming multipart/form-data reader: one named file part to a sink, in bounded memory.

Starlette's own form parser needs an extra package and spools files twice; uploads here go from
the socket to the destination file in one pass, whatever their size.
"""

from collections.abc import AsyncIterator, Callable

__all__ = ["MultipartError", "boundary_of", "stream_file_part"]

MAX_HEADER_BYTES = 16 * 1024
MAX_OTHER_PART_BYTES = 64 * 1024


class MultipartError(ValueError):
    """The request body is not the multipart form it claims to be."""


def boundary_of(content_type: str) -> bytes | None:
    """The boundary of a ``multipart/form-data`` content type, or None.

    >>> boundary_of('multipart/form-data; boundary="ab c"')
    b'ab c'
    >>> boundary_of("application/json") is None
    True
    """
    kind, _, params = content_type.partition(";")
    if kind.strip().lower() != "multipart/form-data":
        return None
    for param in params.split(";"):
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary" and value:
            value = value.strip('"')
            if 0 < len(value) <= 200:
                return value.encode("latin-1")
    return None


def _field_name(headers: bytes) -> str | None:
    for line in headers.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() != b"content-disposition":
            continue
        for param in value.decode("latin-1").split(";"):
            key, _, val = param.strip().partition("=")
            if key.lower() == "name":
                return val.strip().strip('"')
    return None


async def stream_file_part(
    chunks: AsyncIterator[bytes], boundary: bytes, field: str, write: Callable[[memoryview], None]
) -> bool:
    """Pass the content of the part named ``field`` to ``write``; tell whether there was one.

    Other parts are read and dropped (each at most ``MAX_OTHER_PART_BYTES``). Raises
    MultipartError on a malformed body.
    """
    delimiter = b"\r\n--" + boundary
    keep = len(delimiter) + 1
    buf = bytearray(b"\r\n")  # so that the first delimiter looks like every other one
    state = "preamble"
    found = False
    current: str | None = None
    other = 0
    async for chunk in chunks:
        buf += chunk
        while True:
            if state == "preamble":
                at = buf.find(delimiter)
                if at < 0:
                    if len(buf) > MAX_HEADER_BYTES:
                        raise MultipartError("no multipart boundary found")
                    break
                del buf[: at + len(delimiter)]
                state = "after_delimiter"
            elif state == "after_delimiter":
                if len(buf) < 2:
                    break
                if buf[:2] == b"--":
                    return found
                if buf[:2] != b"\r\n":
                    raise MultipartError("malformed multipart delimiter")
                del buf[:2]
                state = "headers"
            elif state == "headers":
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEADER_BYTES:
                        raise MultipartError("multipart part headers too long")
                    break
                current = _field_name(bytes(buf[:end]))
                del buf[: end + 4]
                if current == field:
                    if found:
                        raise MultipartError(f"more than one `{field}` part")
                    found = True
                other = 0
                state = "body"
            else:  # body
                at = buf.find(delimiter)
                n = at if at >= 0 else max(0, len(buf) - keep)
                if n:
                    if current == field:
                        with memoryview(buf) as view:
                            write(view[:n])
                    else:
                        other += n
                        if other > MAX_OTHER_PART_BYTES:
                            raise MultipartError("multipart field too long")
                    del buf[:n]
                if at < 0:
                    break
                del buf[: len(delimiter)]
                state = "after_delimiter"
    raise MultipartError("multipart body ended early")
