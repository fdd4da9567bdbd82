"""Request bodies of the event endpoints: read within INGEST_MAX_BODY_BYTES, then decoded per Content-Encoding.

The limit holds twice: for the bytes on the wire (checked before reading) and for the decoded body. Decoding
never holds more than the limit + one chunk: a decompression bomb (a few MB of gzip that would inflate to GBs)
is refused once its output passes the limit, without inflating the rest.
"""

from __future__ import annotations

import zlib
from typing import Any, Final

import zstandard

CODINGS: Final = ("gzip", "deflate", "zstd")
_CHUNK: Final = 64 * 1024
# RFC 9659: a zstd content coding uses a window of at most 8 MB, so a frame asking for more (up to 2 GB of
# decoder memory) is refused instead of allocated.
_ZSTD_MAX_WINDOW: Final = 8 * 1024 * 1024


class BodyRejected(Exception):
    """The body cannot be read or decoded; ``message`` is meant for the API user."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


def content_coding(*, header: str | None) -> str | None:
    """The body's coding from the Content-Encoding header (None when absent): None for `identity`, else one of
    CODINGS. One coding only: nobody stacks them on a request, and a list would only widen what must be checked."""
    if header is None:
        return None
    coding = header.strip().lower()  # content codings are case-insensitive (RFC 9110)
    if coding in CODINGS:
        return coding
    if coding == "identity":
        return None
    supported = ", ".join(CODINGS)
    if not coding:
        raise BodyRejected(415, f"Content-Encoding is empty: send one of {supported}, or no such header.")
    if "," in coding:
        raise BodyRejected(415, f"Content-Encoding {header!r} lists several codings: send one of {supported}.")
    raise BodyRejected(415, f"Unsupported Content-Encoding {coding!r}: send one of {supported}, or none.")


def declared_length(meta: dict[str, Any], *, at_most: int) -> int | None:
    """The body's Content-Length when it is a plain number of at most `at_most` bytes, else None: for the paths
    that read a body only when that is simple (read_body below is the one that answers for every other case)."""
    declared = meta.get("CONTENT_LENGTH", "")
    if not declared.isdigit() or int(declared) > at_most:
        return None
    return int(declared)


def read_body(*, meta: dict[str, Any], read: Any, limit: int) -> bytes:
    """The body as sent, at most `limit` bytes: by Content-Length, or from a chunked stream (which Django does
    not read). `read` is the request's read(); it stops at Content-Length."""
    declared = meta.get("CONTENT_LENGTH")
    if declared:
        try:
            length = int(declared)
        except ValueError:
            raise BodyRejected(400, "Content-Length is not a number.") from None
        if length > limit:
            raise BodyRejected(413, f"Body of {length} bytes is over the limit of {limit} bytes.")
        # Read from the stream, which stops at Content-Length (checked above): request.body would apply Django's
        # DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MiB, meant for the admin's forms) instead of INGEST_MAX_BODY_BYTES.
        return bytes(read())
    if meta.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked":
        stream = meta["wsgi.input"]
        chunks, size = [], 0
        while size <= limit:
            chunk = stream.read(min(_CHUNK, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise BodyRejected(413, f"Body is over the limit of {limit} bytes.")
        return b"".join(chunks)
    return bytes(read())


def decode(*, body: bytes, coding: str, limit: int) -> bytes:
    """`body` decoded from `coding` (one of CODINGS); 413 once the output passes `limit`, 400 when corrupt."""
    if coding == "zstd":
        return _unzstd(body, limit)
    if coding == "gzip":
        return _inflate(body, limit, wbits=31, name="gzip")
    # "deflate" is meant to be zlib-wrapped (RFC 9110), but clients have long sent raw deflate: accept both.
    wrapped = len(body) >= 2 and body[0] & 0x0F == 8 and ((body[0] << 8) | body[1]) % 31 == 0
    return _inflate(body, limit, wbits=15 if wrapped else -15, name="deflate")


def _too_big(limit: int) -> BodyRejected:
    return BodyRejected(413, f"Decompressed body is over the limit of {limit} bytes.")


def _inflate(body: bytes, limit: int, *, wbits: int, name: str) -> bytes:
    out: list[bytes] = []
    size = 0
    inflater = zlib.decompressobj(wbits)
    pending = body
    while True:
        try:
            chunk = inflater.decompress(pending, _CHUNK)  # never more than a chunk of output per call
        except zlib.error as exc:
            problem = str(exc).rpartition(": ")[2]  # "Error -3 while decompressing data: incorrect header check"
            raise BodyRejected(400, f"Corrupt {name} body: {problem}.") from None
        size += len(chunk)
        if size > limit:
            raise _too_big(limit)
        out.append(chunk)
        if inflater.eof:
            rest = inflater.unused_data
            if not rest:
                return b"".join(out)
            if name != "gzip":
                raise BodyRejected(400, f"Corrupt {name} body: {len(rest)} bytes after the end of the stream.")
            inflater, pending = zlib.decompressobj(wbits), rest  # gzip allows several members, one after another
            continue
        pending = inflater.unconsumed_tail
        if not pending and not chunk:
            raise BodyRejected(400, f"Corrupt {name} body: it ends before the compressed stream does.")


def _unzstd(body: bytes, limit: int) -> bytes:
    decompressor = zstandard.ZstdDecompressor(max_window_size=_ZSTD_MAX_WINDOW)
    # First measure, keeping nothing: zstd's one-shot decoder has no output bound, its stream reader has.
    try:
        reader = decompressor.stream_reader(body, read_across_frames=True)
        size = 0
        while chunk := reader.read(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise _too_big(limit)
        # The reader ends quietly at a cut-off frame; the one-shot decoder says so (output now known bounded).
        out, pending = [], body
        while pending:
            frame = decompressor.decompressobj()
            out.append(frame.decompress(pending))
            if not frame.eof:
                raise BodyRejected(400, "Corrupt zstd body: it ends before the compressed stream does.")
            pending = frame.unused_data
    except zstandard.ZstdError as exc:
        problem = str(exc).removeprefix("zstd decompress error: ")
        raise BodyRejected(400, f"Corrupt zstd body: {problem}.") from None
    return b"".join(out)
