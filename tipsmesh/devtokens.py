"""Access tokens for development tools, benches and tests: a key and its JWK Set.

Services verify a user's access token themselves (kernel.tokens). A bench or
a test that calls a service directly names its user the same way the auth
service does: an ES256 token signed by ``TokenIssuer``'s key, whose JWK Set a
real HTTP server (``JwksServer``) publishes; point the service's
``TIPS_JWKS_URL`` at ``issuer.jwks_url``. Development only: production
services take the auth service's keys.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey, OKPKey

from kernel.settings import Settings

_DEFAULTS = Settings()


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


class TokenSigner:
    """An ES256 signing key; ``mint`` signs access tokens as the auth service does."""

    def __init__(self, key: ECKey | None = None) -> None:
        self.key = key or ECKey.generate_key(
            "P-256", parameters={"kid": f"dev-{uuid.uuid4().hex[:8]}"}
        )

    def save(self, path: Path) -> None:
        """Write the private key (0600), for a client process to ``load``."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(self.key.as_dict(private=True), handle)

    @classmethod
    def load(cls, path: Path) -> TokenSigner:
        return cls(ECKey.import_key(json.loads(path.read_text())))

    def mint(
        self,
        user: str,
        *scopes: str,
        session: str | None = None,
        ttl_s: int = 600,
        issuer: str = _DEFAULTS.auth_issuer,
        audience: str = _DEFAULTS.auth_audience,
    ) -> str:
        now = int(time.time())
        claims: dict[str, object] = {
            "iss": issuer,
            "aud": audience,
            "sub": user,
            "iat": now,
            "exp": now + ttl_s,
            "jti": uuid.uuid4().hex,
        }
        if scopes:
            claims["scope"] = " ".join(scopes)
        if session:
            claims["sid"] = session
        header = {"alg": "ES256", "kid": self.key.kid, "typ": "at+jwt"}
        return jwt.encode(header, claims, self.key)

    def metadata(self, user: str, *scopes: str, ttl_s: int = 3600) -> tuple[tuple[str, str], ...]:
        """gRPC metadata of a call as ``user``: ``authorization: Bearer <token>``."""
        return (("authorization", f"Bearer {self.mint(user, *scopes, ttl_s=ttl_s)}"),)


class TokenIssuer(TokenSigner):
    """A signer and a real JWKS server publishing its key (``jwks_url``)."""

    def __init__(self) -> None:
        super().__init__()
        self.jwks = JwksServer()
        self.jwks.publish(self.key)

    @property
    def jwks_url(self) -> str:
        return self.jwks.url
