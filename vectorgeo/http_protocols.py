"""uvicorn's HTTP protocols, answering malformed requests with JSON instead of plain text.

A request that the HTTP parser cannot read (a garbage request line, a bad header, a bad
``Content-Length`` or chunk size, a request head over :data:`MAX_HEAD_BYTES`) never reaches the
application: uvicorn answers it itself, ``400 Invalid HTTP request received.`` as ``text/plain``, and
closes the connection. These subclasses send the same status as JSON, so every answer of the server is
JSON or a file. The httptools one also bounds the request head, which httptools itself does not (h11
does, with ``h11_max_incomplete_event_size``).

Imported by the worker processes only (it imports uvicorn and both parsers).
"""

from __future__ import annotations

from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from vectorgeo.asgi import json_error
from vectorgeo.errors import InvalidInputError

__all__ = ["BAD_REQUEST", "MAX_HEAD_BYTES", "JsonErrorsH11Protocol", "JsonErrorsHttpToolsProtocol", "protocol_class"]

MAX_HEAD_BYTES = 64 * 1024
"""Largest request line plus headers, bytes (a GET with a 500-vertex polygon takes ~12 KiB)."""

_BODY = json_error(
    "malformed HTTP request: the request line, a header or the body's framing cannot be parsed, "
    f"or the request line and headers are over {MAX_HEAD_BYTES} bytes"
)
BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(_BODY)).encode()
    + b"\r\nconnection: close\r\n\r\n"
    + _BODY
)
"""The whole answer to a request that cannot be parsed."""


class JsonErrorsH11Protocol(H11Protocol):
    """uvicorn's h11 protocol; a request it cannot parse is answered :data:`BAD_REQUEST`."""

    def send_400_response(self, msg: str) -> None:
        self.transport.write(BAD_REQUEST)
        self.transport.close()


class JsonErrorsHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol; a request it cannot parse, or a head over :data:`MAX_HEAD_BYTES`, is a 400.

    The head is measured two ways, each against the limit: in the parser's callbacks (the URL and each
    complete header), so a body never counts and a whole head cannot slip past the limit inside one read;
    and by the bytes of the reads that end with a head still open, so a head that never ends is refused
    too (httptools reports a header only once its value is complete). A read that ends one request and
    opens the next head counts whole (a pipelining client may see the limit a little early).
    """

    _head_bytes = 0  # URL and header bytes of the current head, from the callbacks
    _open_head_reads = 0  # bytes of the reads that ended with the current head incomplete
    _in_head = False

    def send_400_response(self, msg: str) -> None:
        self.transport.write(BAD_REQUEST)
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            self._open_head_reads += len(data)
            if self._open_head_reads > MAX_HEAD_BYTES:
                self.logger.warning("request head over %d bytes", MAX_HEAD_BYTES)
                self.send_400_response("")

    def on_message_begin(self) -> None:
        self._head_bytes, self._open_head_reads, self._in_head = 0, 0, True
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def _count_head(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > MAX_HEAD_BYTES:  # raised in a callback: httptools reports a parse error, a 400
            self.logger.warning("request head over %d bytes", MAX_HEAD_BYTES)
            raise ValueError(f"request head over {MAX_HEAD_BYTES} bytes")


def protocol_class(http: str) -> type:
    """uvicorn's protocol class for ``http`` (``"httptools"`` or ``"h11"``), answering parse errors with JSON.

    Raises:
        InvalidInputError: another name.
    """
    classes = {"httptools": JsonErrorsHttpToolsProtocol, "h11": JsonErrorsH11Protocol}
    if http not in classes:
        raise InvalidInputError(f"the HTTP parser must be httptools or h11, got {http!r}")
    return classes[http]
