"""The edge serving the web app: redirects, headers, misses, the form-post callback."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from gateway.webapp import MAX_CALLBACK_BYTES, web_app_routes

pytestmark = pytest.mark.unit
FORM = {"content-type": "application/x-www-form-urlencoded"}


def client(web_dir: str) -> httpx.AsyncClient:
    app = Starlette(routes=web_app_routes(web_dir))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edge")


@pytest.fixture
def built(tmp_path: Path) -> str:
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text("<!doctype html><title>Tips</title>")
    (tmp_path / "assets" / "main-ABC.js").write_text("console.log(1)")
    return str(tmp_path)


async def test_no_web_dir_serves_nothing() -> None:
    assert web_app_routes("") == []


async def test_the_app_and_its_assets_with_their_headers(built: str) -> None:
    async with client(built) as http:
        assert (await http.get("/")).headers["location"] == "/app/"
        assert (await http.get("/app")).headers["location"] == "/app/"
        index = await http.get("/app/")
        assert index.status_code == 200 and "<title>Tips</title>" in index.text
        assert index.headers["cache-control"] == "no-cache"
        assert "script-src 'self'" in index.headers["content-security-policy"]
        assert index.headers["referrer-policy"] == "no-referrer"
        asset = await http.get("/app/assets/main-ABC.js")
        assert "immutable" in asset.headers["cache-control"]
        missing = await http.get("/app/assets/nope.js")
        assert missing.status_code == 404
        assert missing.json() == {
            "code": 5,
            "message": "web app: not found: /app/assets/nope.js",
            "details": [],
        }
        assert (await http.get("/app/../../etc/passwd")).status_code == 404


async def test_an_unbuilt_app_says_how_to_build_it(tmp_path: Path) -> None:
    async with client(str(tmp_path / "dist")) as http:
        answer = await http.get("/app/")
        assert answer.status_code == 404 and "run `make web`" in answer.json()["message"]


async def test_the_form_post_callback_becomes_the_query_callback(built: str) -> None:
    async with client(built) as http:
        posted = await http.post(
            "/app/", content=b"code=c%2F1&state=s-1&user=%7B%7D&extra=x", headers=FORM
        )
        assert posted.status_code == 303
        # Only what the callback needs is carried over.
        assert posted.headers["location"] == "/app/?code=c%2F1&state=s-1"
        denied = await http.post("/app/", content=b"error=access_denied&state=s-2", headers=FORM)
        assert denied.headers["location"] == "/app/?state=s-2&error=access_denied"


@pytest.mark.parametrize(
    ("body", "headers", "says"),
    [
        (b"code=x", FORM, "field `state` is required"),
        (b'{"state": "s"}', {"content-type": "application/json"}, "content-type must be"),
        (b"state=" + b"x" * (MAX_CALLBACK_BYTES + 1), FORM, "body over"),
    ],
    ids=["no-state", "json", "oversize"],
)
async def test_a_bad_form_post_is_a_400_naming_the_problem(
    built: str, body: bytes, headers: dict[str, str], says: str
) -> None:
    async with client(built) as http:
        answer = await http.post("/app/", content=body, headers=headers)
        assert answer.status_code == 400 and says in answer.json()["message"]
