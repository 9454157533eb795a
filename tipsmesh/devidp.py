"""A local OpenID Connect issuer over real HTTP, standing in for Google or Apple.

Development only: `tips up` runs one for each provider so a newcomer can
sign in without a Google or Apple account (``tips login``), and the tests use
it as the providers' stand-in. The auth service accepts an issuer that is
not https only in dev mode (``TIPS_DEV_MODE``). A Starlette app served by
uvicorn on a free port of 127.0.0.1, in the caller's event loop. It serves
what the auth service uses of a real provider:

- ``/.well-known/openid-configuration`` (issuer, endpoints, jwks_uri);
- ``/jwks`` with its public RSA keys (``jwks_fetches`` counts requests);
- ``/authorize``: checks the request and redirects to ``redirect_uri`` with
  ``code`` and ``state`` (the user is ``next_login``). With ``sign_in_page``
  (as `tips up` runs it) it first shows a page asking who signs in, the
  provider's own sign-in screen in miniature, so the web app's sign-in works
  in a browser; ``response_mode=form_post`` (Apple) posts the answer back;
- ``/token``: exchanges a code once, checking client id, redirect URI and
  the PKCE S256 verifier, and returns an ID token.

``mint`` signs ID tokens directly (what a mobile SDK would hand the app),
with knobs for every attack the tests try. ``POST /dev/id-token`` (JSON
``{"subject", "nonce", "email"}``) does the same over HTTP for ``tips login``:
the part a real provider does behind its own sign-in screen.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import html
import json
import re
import secrets
import socket
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode

import uvicorn
from joserfc import jwt
from joserfc.jwk import RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

_SIGN_IN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in with {provider} (development)</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 26rem; margin: 2rem auto;
  padding: 0 1rem">
<main>
<h1>Sign in with {provider}</h1>
<p><strong>Development provider.</strong> Not a real {provider} account: a local
stand-in that <code>tips up</code> runs. The user <code>demo</code> has a week of data.</p>
{error}
<form method="get" action="/authorize">{kept}
<label for="login">Who signs in</label>
<input id="login" name="login" value="{default}" autocomplete="username" required
  style="display: block; width: 100%; font-size: 1rem; padding: .5rem; margin: .5rem 0 1rem">
<button type="submit" style="font-size: 1rem; padding: .6rem 1.2rem">Continue</button>
</form></main></body></html>
"""

_FORM_POST_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Signing in</title></head>
<body onload="document.forms[0].submit()"><form method="post" action="{action}">{fields}
<noscript><button type="submit">Continue</button></noscript></form></body></html>
"""


def _form_post(redirect_uri: str, answer: dict[str, str]) -> Response:
    """OAuth 2.0 Form Post Response Mode: the browser posts the answer to the client."""
    fields = "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
        for k, v in answer.items()
    )
    page = _FORM_POST_PAGE.format(action=html.escape(redirect_uri), fields=fields)
    return Response(page, media_type="text/html; charset=utf-8")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Login:
    """Who signs in at the authorize endpoint."""

    subject: str
    email: str = ""
    email_verified: bool = True

    @classmethod
    def dev_user(cls, name: str) -> Login:
        """The development user ``name``: the one `tips login --as NAME` signs in."""
        return cls(f"dev-{name}", f"{name}@dev.tips.local")


# Names a development user may have: they become a subject and an email address.
_DEV_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,39}$")


@dataclass
class _Grant:
    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str
    login: Login


@dataclass
class OidcIssuer:
    name: str
    client_ids: list[str]
    port: int = 0
    keys: list[RSAKey] = field(default_factory=list)
    jwks_fetches: int = 0
    next_login: Login = field(default_factory=lambda: Login("nobody"))
    # Ask in a page who signs in (a browser's sign-in), instead of next_login.
    sign_in_page: bool = False
    # Verifiers the token endpoint received (tests look for them in the DB).
    seen_verifiers: list[str] = field(default_factory=list)
    _grants: dict[str, _Grant] = field(default_factory=dict)
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_key(self) -> RSAKey:
        key = RSAKey.generate_key(2048, private=True)
        key.ensure_kid()
        self.keys.insert(0, key)
        return key

    # --- tokens ---------------------------------------------------------------

    def mint(
        self,
        subject: str,
        *,
        nonce: str,
        aud: str | list[str] | None = None,
        email: str = "",
        email_verified: Any = True,
        iss: str | None = None,
        exp_in: int = 600,
        iat_in: int = 0,
        key: RSAKey | None = None,
        kid: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        now = int(time.time())
        signer = key or self.keys[0]
        claims: dict[str, Any] = {
            "iss": iss or self.issuer,
            "aud": aud if aud is not None else self.client_ids[0],
            "sub": subject,
            "iat": now + iat_in,
            "exp": now + exp_in,
            "nonce": nonce,
        }
        if email:
            claims["email"] = email
            claims["email_verified"] = email_verified
        claims.update(extra or {})
        header = {"alg": "RS256", "kid": kid or signer.kid, "typ": "JWT"}
        return jwt.encode(header, claims, signer, algorithms=["RS256"])

    def forge(self, header: dict[str, Any], claims: dict[str, Any], signature: bytes) -> str:
        head = _b64(json.dumps(header).encode())
        body = _b64(json.dumps(claims).encode())
        return f"{head}.{body}.{_b64(signature)}"

    def forge_hs256_with_public_key(self, claims: dict[str, Any]) -> str:
        """The classic confusion: HMAC "signed" with the issuer's public key."""
        public_pem = self.keys[0].as_pem(private=False)
        header = {"alg": "HS256", "kid": self.keys[0].kid, "typ": "JWT"}
        head = _b64(json.dumps(header).encode())
        body = _b64(json.dumps(claims).encode())
        mac = hmac.new(public_pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
        return f"{head}.{body}.{_b64(mac)}"

    def claims(self, subject: str, nonce: str, **extra: Any) -> dict[str, Any]:
        now = int(time.time())
        base: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.client_ids[0],
            "sub": subject,
            "iat": now,
            "exp": now + 600,
            "nonce": nonce,
        }
        base.update(extra)
        return base

    # --- HTTP -------------------------------------------------------------------

    async def _discovery(self, request: Request) -> Response:
        return JSONResponse(
            {
                "issuer": self.issuer,
                "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token",
                "jwks_uri": f"{self.issuer}/jwks",
                "response_types_supported": ["code"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
            }
        )

    async def _jwks(self, request: Request) -> Response:
        self.jwks_fetches += 1
        keys = [dict(k.as_dict(private=False), alg="RS256", use="sig") for k in self.keys]
        return JSONResponse({"keys": keys})

    async def _authorize(self, request: Request) -> Response:
        q = request.query_params
        problems = [
            name
            for name, ok in (
                ("response_type", q.get("response_type") == "code"),
                ("client_id", q.get("client_id") in self.client_ids),
                ("redirect_uri", bool(q.get("redirect_uri"))),
                ("code_challenge_method", q.get("code_challenge_method") == "S256"),
                ("code_challenge", len(q.get("code_challenge", "")) == 43),
                ("state", bool(q.get("state"))),
                ("nonce", bool(q.get("nonce"))),
                ("scope", "openid" in q.get("scope", "").split()),
            )
            if not ok
        ]
        if problems:
            return JSONResponse({"error": "invalid_request", "fields": problems}, 400)
        login = self.next_login
        if self.sign_in_page:
            name = q.get("login", "").strip().lower()
            if not _DEV_NAME.match(name):
                return self._sign_in_form(request, q.get("login_hint", ""), bool(name))
            login = Login.dev_user(name)
        code = secrets.token_urlsafe(24)
        self._grants[code] = _Grant(
            q["client_id"], q["redirect_uri"], q["code_challenge"], q["nonce"], login
        )
        answer = {"code": code, "state": q["state"]}
        if q.get("response_mode") == "form_post":
            return _form_post(q["redirect_uri"], answer)
        target = f"{q['redirect_uri']}?{urlencode(answer)}"
        return RedirectResponse(target, status_code=302)

    def _sign_in_form(self, request: Request, hint: str, rejected: bool) -> Response:
        """Who signs in: a name (``demo`` has seeded data); the query carried along."""
        kept = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
            for k, v in request.query_params.items()
            if k != "login"
        )
        default = hint.split("@")[0] if hint else "demo"
        error = (
            '<p role="alert">Use 1-40 lowercase letters, digits, dots, dashes or underscores.</p>'
            if rejected
            else ""
        )
        page = _SIGN_IN_PAGE.format(
            provider=html.escape(self.name.capitalize()),
            kept=kept,
            default=html.escape(default),
            error=error,
        )
        return Response(page, media_type="text/html; charset=utf-8")

    async def _dev_id_token(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return JSONResponse({"error": "invalid_request", "fields": ["body"]}, 400)
        problems = [
            name
            for name in ("subject", "nonce")
            if not isinstance(body.get(name), str) or not body.get(name)
        ]
        if problems:
            return JSONResponse({"error": "invalid_request", "fields": problems}, 400)
        email = body.get("email") if isinstance(body.get("email"), str) else ""
        token = self.mint(body["subject"], nonce=body["nonce"], email=email)
        return JSONResponse({"id_token": token})

    async def _token(self, request: Request) -> Response:
        # Parsed by hand: Starlette's form parser needs python-multipart.
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        grant = self._grants.pop(str(form.get("code", "")), None)
        verifier = str(form.get("code_verifier", ""))
        self.seen_verifiers.append(verifier)
        if (
            grant is None
            or form.get("grant_type") != "authorization_code"
            or form.get("client_id") != grant.client_id
            or form.get("redirect_uri") != grant.redirect_uri
        ):
            return JSONResponse({"error": "invalid_grant"}, 400)
        challenge = _b64(hashlib.sha256(verifier.encode()).digest())
        if not hmac.compare_digest(challenge, grant.challenge):
            return JSONResponse({"error": "invalid_grant", "error_description": "PKCE"}, 400)
        login = grant.login
        id_token = self.mint(
            login.subject,
            nonce=grant.nonce,
            aud=grant.client_id,
            email=login.email,
            email_verified=login.email_verified,
        )
        return JSONResponse(
            {
                "access_token": "opaque",
                "token_type": "Bearer",
                "expires_in": 3600,
                "id_token": id_token,
            }
        )

    # --- lifecycle ----------------------------------------------------------------

    async def start(self) -> OidcIssuer:
        if not self.keys:
            self.add_key()
        self.port = self.port or _free_port()
        app = Starlette(
            routes=[
                Route("/.well-known/openid-configuration", self._discovery),
                Route("/jwks", self._jwks),
                Route("/authorize", self._authorize),
                Route("/token", self._token, methods=["POST"]),
                Route("/dev/id-token", self._dev_id_token, methods=["POST"]),
            ]
        )
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.get_running_loop().create_task(self._server.serve())
        for _ in range(200):
            if self._server.started:
                return self
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)
        raise RuntimeError(f"OIDC issuer {self.name} did not start")

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            async with asyncio.timeout(5):
                await self._task
