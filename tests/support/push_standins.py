"""Local stand-ins for the notifier's delivery channels, over real protocols.

- ``FcmStandIn``: Google's OAuth token endpoint for service accounts (checks
  the RS256 JWT assertion against the key's public half with ``cryptography``,
  independently of the notifier's joserfc, RFC 7523) and FCM
  HTTP v1 ``POST /v1/projects/{project}/messages:send`` (checks the bearer
  token, records the JSON body, answers as FCM documents: 200 with the
  message name, 404 ``UNREGISTERED`` for dead tokens, scripted faults).
- ``SmtpStandIn``: an aiosmtpd SMTP server collecting messages.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import Message
from typing import Any
from urllib.parse import parse_qs

import uvicorn
from aiosmtpd.controller import Controller
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tipsmesh.localinfra import free_port

PROJECT = "tips-test"
CLIENT_EMAIL = "notifier@tips-test.iam.gserviceaccount.com"
KEY_ID = "k1"


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class FcmStandIn:
    key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    issued: list[str] = field(default_factory=list)  # access tokens handed out
    assertions: list[dict[str, Any]] = field(default_factory=list)  # verified JWT claims
    sends: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # path, auth, body
    unregistered: set[str] = field(default_factory=set)  # device tokens FCM reports dead
    faults: deque[tuple[int, dict[str, str]]] = field(default_factory=deque)
    base_url: str = ""

    def credentials(self) -> str:
        """A service-account key file's JSON, as Google issues it."""
        pem = self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        return json.dumps(
            {
                "type": "service_account",
                "project_id": PROJECT,
                "private_key_id": KEY_ID,
                "private_key": pem,
                "client_email": CLIENT_EMAIL,
                "token_uri": f"{self.base_url}/token",
            }
        )

    async def token(self, request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        try:
            head, claims, signature = form["assertion"].split(".")
            self.key.public_key().verify(
                _b64url_decode(signature),
                f"{head}.{claims}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
            header = json.loads(_b64url_decode(head))
            body = json.loads(_b64url_decode(claims))
        except Exception:
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        ok = (
            header.get("alg") == "RS256"
            and header.get("kid", KEY_ID) == KEY_ID  # Google picks the public key by kid
            and body.get("iss") == CLIENT_EMAIL
            and body.get("aud") == f"{self.base_url}/token"
            and body.get("scope") == "https://www.googleapis.com/auth/firebase.messaging"
            and body.get("exp", 0) > body.get("iat", 0)
        )
        if not ok:
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        self.assertions.append(body)
        access = f"ya29.{secrets.token_urlsafe(24)}"
        self.issued.append(access)
        return JSONResponse({"access_token": access, "expires_in": 3599, "token_type": "Bearer"})

    async def send(self, request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        body = json.loads(await request.body())
        self.sends.append((request.url.path, auth, body))
        if not auth.startswith("Bearer ") or auth.removeprefix("Bearer ") not in self.issued:
            return _fcm_error(401, "UNAUTHENTICATED", "")
        if self.faults:
            status, headers = self.faults.popleft()
            status_name = "UNAVAILABLE" if status >= 500 else "RESOURCE_EXHAUSTED"
            return _fcm_error(status, status_name, "", headers)
        message = body.get("message", {})
        if message.get("token") in self.unregistered:
            return _fcm_error(404, "NOT_FOUND", "UNREGISTERED")
        if not message.get("token") or "notification" not in message:
            return _fcm_error(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
        project = request.path_params["project"]
        return JSONResponse({"name": f"projects/{project}/messages/0:{secrets.token_hex(8)}"})

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/token", self.token, methods=["POST"]),
                Route("/v1/projects/{project}/messages:send", self.send, methods=["POST"]),
            ]
        )


def _fcm_error(
    status: int, name: str, code: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    error: dict[str, Any] = {"code": status, "message": "stand-in error", "status": name}
    if code:
        error["details"] = [
            {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}
        ]
    return JSONResponse({"error": error}, status_code=status, headers=headers)


@contextlib.asynccontextmanager
async def serve_fcm(standin: FcmStandIn) -> AsyncIterator[str]:
    """Serve ``standin`` on a free port in this event loop; yields its base URL."""
    port = free_port()
    standin.base_url = f"http://127.0.0.1:{port}"
    config = uvicorn.Config(
        standin.app(), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield standin.base_url
    finally:
        server.should_exit = True
        await task


class _Collect:
    def __init__(self, inbox: list[tuple[list[str], Message]]) -> None:
        self.inbox = inbox
        self.reject_next: deque[str] = deque()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.reject_next:
            return self.reject_next.popleft()
        message = message_from_bytes(envelope.content, policy=policy.default)
        self.inbox.append((list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"


class SmtpStandIn:
    """A real SMTP server (aiosmtpd, in its own thread) that keeps what it receives."""

    def __init__(self) -> None:
        self.inbox: list[tuple[list[str], Message]] = []
        self.handler = _Collect(self.inbox)
        self.port = free_port()
        self._controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()
