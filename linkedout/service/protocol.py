"""The HTTP protocol `linkedout serve` runs uvicorn with: uvicorn's own, except that a request
it cannot parse (a 70,000-character path, a malformed request line or header) is answered with
the JSON `{"detail": ...}` body every other error of the service has, not uvicorn's plain text,
so a client reads every 4xx the same way."""

from __future__ import annotations

import json

try:  # uvicorn[standard] brings httptools, which uvicorn prefers; plain uvicorn has h11
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base
except ImportError:  # pragma: no cover - depends on the install
    from uvicorn.protocols.http.h11_impl import H11Protocol as _Base

UNREADABLE = (
    "the request could not be read as HTTP/1.1 (a malformed request line or header, or a path "
    "or header over the parser's limits): send a shorter, well-formed request"
)


class JSONErrorsProtocol(_Base):
    def send_400_response(self, msg: str) -> None:
        # Both base classes close the connection after this answer; so does this one. Their
        # parser state is not touched: nothing else is read from this connection.
        body = json.dumps({"detail": UNREADABLE}).encode()
        head = [b"HTTP/1.1 400 Bad Request\r\n"]
        head += [
            name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers
        ]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self.transport.close()
