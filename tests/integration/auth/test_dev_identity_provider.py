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
