"""The development identity provider `tips up` runs: Google's wire format, and its
dev-only token endpoint refusing what it cannot sign."""

from __future__ import annotations

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from tipsmesh.devidp import OidcIssuer

pytestmark = pytest.mark.integration


async def test_dev_id_tokens_verify_with_the_published_keys_and_name_bad_fields() -> None:
    idp = await OidcIssuer("google", ["tips-dev-app"]).start()
    try:
        async with httpx.AsyncClient(base_url=idp.issuer, trust_env=False, timeout=10) as http:
            discovery = (await http.get("/.well-known/openid-configuration")).json()
            assert discovery["issuer"] == idp.issuer
            keys = KeySet.import_key_set((await http.get("/jwks")).json())
            minted = await http.post(
                "/dev/id-token", json={"subject": "dev-ada", "nonce": "n-1", "email": "a@x.y"}
            )
            assert minted.status_code == 200
            claims = jwt.decode(minted.json()["id_token"], keys, algorithms=["RS256"]).claims
            assert (claims["sub"], claims["nonce"], claims["aud"]) == (
                "dev-ada",
                "n-1",
                "tips-dev-app",
            )
            assert claims["iss"] == idp.issuer and claims["email"] == "a@x.y"
            bad = await http.post("/dev/id-token", json={"subject": "", "nonce": 7})
            assert bad.status_code == 400 and bad.json()["fields"] == ["subject", "nonce"]
            garbage = await http.post("/dev/id-token", content=b"{not json")
            assert garbage.status_code == 400 and garbage.json()["fields"] == ["body"]
    finally:
        await idp.stop()


def _authorize_query(**extra: str) -> dict[str, str]:
    return {
        "response_type": "code",
        "client_id": "tips-dev-app",
        "redirect_uri": "http://127.0.0.1:8080/app/",
        "code_challenge_method": "S256",
        "code_challenge": "A" * 43,
        "state": "st-1",
        "nonce": "n-1",
        "scope": "openid email",
        **extra,
    }


async def test_the_sign_in_page_asks_who_signs_in_and_keeps_the_request() -> None:
    idp = await OidcIssuer("apple", ["tips-dev-app"], sign_in_page=True).start()
    try:
        async with httpx.AsyncClient(base_url=idp.issuer, trust_env=False, timeout=10) as http:
            page = await http.get("/authorize", params=_authorize_query(login_hint="ada@x.y"))
            assert page.status_code == 200 and "text/html" in page.headers["content-type"]
            assert "Development provider" in page.text
            assert 'name="state" value="st-1"' in page.text  # carried to the next step
            assert 'value="ada"' in page.text  # the hint's name pre-filled
            bad = await http.get("/authorize", params=_authorize_query(login="Ada <script>"))
            assert bad.status_code == 200 and 'role="alert"' in bad.text
            assert "<script>" not in bad.text  # escaped, never echoed as markup

            redirected = await http.get("/authorize", params=_authorize_query(login="ada"))
            assert redirected.status_code == 302
            location = httpx.URL(redirected.headers["location"])
            assert str(location).startswith("http://127.0.0.1:8080/app/?")
            assert location.params["state"] == "st-1" and location.params["code"]

            # Apple's form post: the answer is posted to the redirect URI, not in its URL.
            posted = await http.get(
                "/authorize", params=_authorize_query(login="ada", response_mode="form_post")
            )
            assert posted.status_code == 200
            assert 'action="http://127.0.0.1:8080/app/"' in posted.text
            assert 'name="state" value="st-1"' in posted.text and 'name="code"' in posted.text
    finally:
        await idp.stop()
