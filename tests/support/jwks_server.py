"""A JWK Set served over real HTTP, for tests that sign their own access tokens."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from joserfc.jwk import ECKey, OKPKey


class JwksServer:
    """A real HTTP server publishing a JWK Set the test can change."""

    def __init__(self) -> None:
        self.doc: dict[str, Any] = {"keys": []}
        self.status = 200
        self.fetches = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.fetches += 1
                body = json.dumps(server.doc).encode()
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/.well-known/jwks.json"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def publish(self, *keys: ECKey | OKPKey) -> None:
        self.doc = {"keys": [k.as_dict(private=False, use="sig") for k in keys]}

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
