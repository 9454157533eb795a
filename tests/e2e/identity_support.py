"""Shared pieces of the e2e modules that sign users in through the auth service.

Two local OIDC issuers (``tipsmesh.devidp``) stand in for Google and
Apple in a background thread's event loop; the mesh `tips up` starts trusts
them (TIPS_AUTH_*), and the gateway verifies the auth service's own access
tokens. ``sign_in`` goes through ``POST /v1/sessions:signIn`` as an app would.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from tests.e2e.meshutil import RunningMesh, start_mesh, stop_and_check
from tipsmesh.devidp import OidcIssuer

T = TypeVar("T")
GOOGLE_CLIENT, APPLE_CLIENT = "google-ios", "com.tips.app"


class Background:
    """An event loop in a thread, for the asyncio-based stand-ins."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@dataclass
class Issuers:
    """The background loop and the Google and Apple stand-ins running on it."""

    bg: Background
    google: OidcIssuer
    apple: OidcIssuer

    def env(self) -> dict[str, str]:
        """The auth service's settings that make it trust the two issuers."""
        return {
            "TIPS_AUTH_GOOGLE_ISSUER": self.google.issuer,
            "TIPS_AUTH_GOOGLE_CLIENT_IDS": json.dumps(self.google.client_ids),
            "TIPS_AUTH_APPLE_ISSUER": self.apple.issuer,
            "TIPS_AUTH_APPLE_CLIENT_IDS": json.dumps(self.apple.client_ids),
        }

    def provider_of(self, issuer: OidcIssuer) -> str:
        return "IDENTITY_PROVIDER_GOOGLE" if issuer is self.google else "IDENTITY_PROVIDER_APPLE"

    def id_token(self, issuer: OidcIssuer, subject: str) -> tuple[str, str]:
        """A fresh ID token as the provider's SDK hands it to the app, and the raw nonce."""
        raw = secrets.token_urlsafe(16)
        # Apple's SDK is given SHA-256(raw nonce); Google's the raw nonce (docs/auth.md).
        nonce = raw if issuer is self.google else hashlib.sha256(raw.encode()).hexdigest()
        return issuer.mint(subject, nonce=nonce, email=f"{subject}@example.com"), raw


@contextlib.contextmanager
def oidc_issuers() -> Iterator[Issuers]:
    """Google and Apple stand-ins on a background loop, stopped on exit."""
    bg = Background()
    google = apple = None
    try:
        google = bg.run(OidcIssuer("google", [GOOGLE_CLIENT]).start())
        apple = bg.run(OidcIssuer("apple", [APPLE_CLIENT]).start())
        yield Issuers(bg, google, apple)
    finally:
        for issuer in (google, apple):
            if issuer is not None:
                with contextlib.suppress(Exception):
                    bg.run(issuer.stop())
        bg.close()


@contextlib.contextmanager
def identity_mesh(
    issuers: Issuers, prefix: str, extra_env: dict[str, str] | None = None
) -> Iterator[RunningMesh]:
    """`tips up` trusting ``issuers``; stopped on exit and checked clean."""
    # Not under pytest's basetemp: another pytest session on the machine re-chmods
    # /tmp/pytest-of-<user> to 0700, and PostgreSQL (its own system user) could then
    # not be stopped (pg_ctl cannot reach its data dir).
    home = Path(tempfile.mkdtemp(prefix=prefix))
    home.chmod(0o755)
    mesh = start_mesh(home, extra_env={**issuers.env(), **(extra_env or {})})
    try:
        yield mesh
    finally:
        if mesh.proc.poll() is None:
            try:
                assert stop_and_check(mesh, signal.SIGTERM) == 0
            except AssertionError as exc:
                tail = "".join(mesh.output[-30:])
                raise AssertionError(f"{exc}\n--- tips up output (tail):\n{tail}") from None
        shutil.rmtree(home, ignore_errors=True)


def rest_client(mesh: RunningMesh, token: str | None = None, timeout: float = 15) -> httpx.Client:
    """JSON over HTTP to the gateway, as the app; with the user's access token if given."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(
        base_url=f"http://127.0.0.1:{mesh.port('gateway')}",
        headers=headers,
        timeout=timeout,
        trust_env=False,
        follow_redirects=False,
    )


def sign_in(
    mesh: RunningMesh,
    issuers: Issuers,
    issuer: OidcIssuer,
    subject: str,
    device: str,
    id_token: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """``POST /v1/sessions:signIn`` with a fresh ID token (or ``id_token``): the answer."""
    token, raw = id_token or issuers.id_token(issuer, subject)
    body = {
        "provider": issuers.provider_of(issuer),
        "idToken": token,
        "nonce": raw,
        "deviceName": device,
        "platform": "PLATFORM_IOS",
    }
    with rest_client(mesh) as http:
        response = http.post("/v1/sessions:signIn", json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


def user_id(signed: dict[str, Any]) -> str:
    return str(signed["user"]).removeprefix("users/")


def eventually(what: str, probe: Callable[[], T | None], timeout: float = 20) -> T:
    """``probe()`` until it returns something other than None, at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got is not None:
            return got
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(0.2)
