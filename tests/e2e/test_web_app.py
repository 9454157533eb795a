"""The web app in a real browser (Debian's Chromium, headless, driven by Playwright)
against the mesh `tips up` starts: the app at ``/app/`` on the gateway, signing in
through the development identity provider's page, as a person would.

On a phone-sized screen a new user signs in with Google, reacts to the tip, sees
it in the history, changes preferences and quiet hours (and is told which field
is wrong when a category is unknown), allows and withdraws a consent and reads
its history, then deletes the account. A second user signs in with Apple (the
provider answers with a form post), using only the keyboard. Another allows
the fitness consent and connects Fitbit activity through the development
provider's consent page (Allow), comes back connected and gets signals from
the first sync; one more, on `localhost`, denies Google Calendar there and is
told so. What the screens show is checked against what the REST edge says
with the same session.

Screenshots of every screen go to ``test-results/web/`` (an artifact of the run).
``make test`` builds the app (``make web``) and installs Chromium (``make browser``).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Locator, Page, Playwright, expect, sync_playwright

from tests.e2e.meshutil import ROOT, STOP_TIMEOUT, RunningMesh, start_mesh

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]

SHOTS = ROOT / "test-results" / "web"
PHONE = {"width": 390, "height": 844}
# Generous: the machine may be a loaded 2-core one. Conditions are waited for.
WAIT_MS = 30_000
# As the machine's notes say: no network of Chromium's own (it is refused here).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    found = shutil.which("chromium")
    assert found, "Debian's chromium is not installed: run `make browser`"
    return found


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    index = ROOT / "web" / "dist" / "index.html"
    assert index.is_file(), f"{index} is missing: run `make web`"
    running = start_mesh(tmp_path_factory.mktemp("web-mesh"))
    yield running
    running.proc.send_signal(signal.SIGTERM)
    try:
        running.proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        running.proc.kill()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        yield _launch(playwright)


def _launch(playwright: Playwright) -> Browser:
    return playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"the page threw: {errors}"


def gateway(mesh: RunningMesh) -> str:
    return f"http://127.0.0.1:{mesh.port('gateway')}"


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def api(mesh: RunningMesh, page: Page, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """The REST edge with the browser's own session (its access token)."""
    token = page.evaluate("JSON.parse(sessionStorage.getItem('tips.session')).accessToken")
    headers = {"authorization": f"Bearer {token}"}
    with httpx.Client(base_url=gateway(mesh), timeout=30, trust_env=False) as http:
        return http.request(method, path, headers=headers, **kwargs)


def assert_fits_phone_and_labelled(page: Page) -> None:
    """No sideways scrolling on a phone, and every control has an accessible name."""
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"page is {width}px wide on a {PHONE['width']}px screen"
    unnamed = page.evaluate(
        """() => [...document.querySelectorAll('input:not([type=hidden]), select, button, a[href]')]
            .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                          && !el.textContent.trim())
            .map(el => el.outerHTML.slice(0, 80))"""
    )
    assert not unnamed, f"controls without an accessible name: {unnamed}"


def tab_to(page: Page, target: Locator) -> None:
    """Tab until ``target`` has the focus."""
    for _ in range(10):
        if target.evaluate("el => el === document.activeElement"):
            break
        page.keyboard.press("Tab")
    expect(target).to_be_focused()


def sign_in(
    page: Page, mesh: RunningMesh, provider: str, name: str, host: str = "127.0.0.1"
) -> None:
    page.goto(gateway(mesh).replace("127.0.0.1", host) + "/")
    expect(page).to_have_url(re.compile(r"/app/$"))
    expect(page.get_by_role("heading", name="Sign in to Tips")).to_be_visible()
    page.get_by_role("button", name=f"Sign in with {provider}").click()
    # The development provider's own page (another origin), then back to /app/.
    expect(page.get_by_role("heading", name=f"Sign in with {provider}")).to_be_visible()
    page.get_by_label("Who signs in").fill(name)
    page.get_by_role("button", name="Continue").click()
    expect(page.get_by_role("heading", name="Your tip")).to_be_visible()
    # The code and state are gone from the address bar and the history.
    assert "code=" not in page.url and "state=" not in page.url


def test_a_new_user_on_a_phone_uses_every_screen(mesh: RunningMesh, page: Page) -> None:
    name = f"web-{uuid.uuid4().hex[:8]}"
    sign_in(page, mesh, "Google", name)

    # The tip, with its explanation, as the edge decided it.
    card = page.get_by_role("article")
    expect(card).to_be_visible()
    shot(page, "1-tip")
    assert_fits_phone_and_labelled(page)
    title = card.get_by_role("heading", level=2).inner_text()
    history = api(mesh, page, "GET", "/v1/users/me/tips:history").json()["tips"]
    shown = next(t for t in history if t["title"] == title)
    expect(card.get_by_text(shown["explanation"])).to_be_visible()
    card.get_by_role("button", name="Done").click()
    expect(page.get_by_role("status")).to_contain_text(f"Marked done: {title}")
    reacted = api(mesh, page, "GET", f"/v1/{shown['name']}").json()
    assert reacted["state"] == "TIP_STATE_DONE" and reacted["reaction"] == "TIP_REACTION_DONE"
    shot(page, "2-reacted")

    page.get_by_role("link", name="History").click()
    expect(page.get_by_role("heading", name="History")).to_be_focused()
    done_row = page.get_by_role("listitem").filter(has_text=title)
    expect(done_row.get_by_text("Done", exact=True)).to_be_visible()
    shot(page, "3-history")
    assert_fits_phone_and_labelled(page)

    page.get_by_role("link", name="Connections").click()
    expect(page.get_by_role("list", name="Providers").get_by_role("listitem").first).to_be_visible()
    providers = api(mesh, page, "GET", "/v1/providers").json()["providers"]
    expect(page.get_by_role("list", name="Providers").get_by_role("listitem")).to_have_count(
        len(providers)
    )
    shot(page, "4-connections")
    assert_fits_phone_and_labelled(page)

    # Preferences: a malformed category is refused with the field named, then a
    # good change is saved.
    page.get_by_role("link", name="Preferences").click()
    page.get_by_label("Name").fill("Web Tester")
    page.get_by_label("Time zone").select_option("Europe/Madrid")
    page.get_by_label("Never tips about").fill("Late Night!")
    page.get_by_role("button", name="Add quiet hours").click()
    quiet = page.get_by_role("listitem", name="Quiet hours 1")
    quiet.get_by_label("Day", exact=True).select_option("SATURDAY")
    quiet.get_by_label("From", exact=True).fill("21:30")
    quiet.get_by_label("To", exact=True).fill("08:15")
    page.get_by_role("button", name="Save preferences").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("muted_categories")
    expect(alert).to_contain_text("Late Night!")
    shot(page, "5-preferences-error")
    page.get_by_label("Never tips about").fill("social")
    page.get_by_role("button", name="Save preferences").click()
    expect(page.get_by_role("status")).to_have_text("Preferences saved.")
    shot(page, "6-preferences-saved")
    assert_fits_phone_and_labelled(page)
    stored = api(mesh, page, "GET", "/v1/users/me/profile").json()
    assert stored["displayName"] == "Web Tester"
    assert stored["timeZone"] == "Europe/Madrid"
    assert stored["mutedCategories"] == ["social"]
    assert stored["quietHours"] == [
        {
            "dayOfWeek": "SATURDAY",
            "startTimeOfDay": {"hours": 21, "minutes": 30, "seconds": 0, "nanos": 0},
            "endTimeOfDay": {"hours": 8, "minutes": 15, "seconds": 0, "nanos": 0},
        }
    ]

    # Consents: allow fitness, withdraw it, and read the two changes back.
    page.get_by_role("link", name="Consents").click()
    page.get_by_role("button", name="Allow Fitness").click()
    expect(page.get_by_role("status")).to_have_text("Fitness: allowed.")
    page.get_by_role("button", name="Withdraw Fitness").click()
    expect(page.get_by_role("status")).to_have_text("Fitness: withdrawn.")
    consent = api(mesh, page, "GET", "/v1/users/me/consents/fitness-data-for-tips").json()
    assert consent["state"] == "CONSENT_STATE_REVOKED"
    assert consent["source"] == "CONSENT_SOURCE_WEB"
    row = page.get_by_role("listitem").filter(has=page.get_by_text("Fitness", exact=True))
    row.get_by_role("button", name="Show history").click()
    changes = row.get_by_role("list", name="Changes").get_by_role("listitem")
    expect(changes).to_have_count(2)
    expect(changes.filter(has_text="Withdrawn on the web")).to_have_count(1)
    expect(changes.filter(has_text="Allowed on the web")).to_have_count(1)
    shot(page, "7-consents")
    assert_fits_phone_and_labelled(page)

    # Deleting the account: confirmed by typing, then signed out for good.
    page.get_by_role("link", name="Account").click()
    delete = page.get_by_role("button", name="Delete my account")
    expect(delete).to_be_disabled()
    page.get_by_label("Type delete to confirm").fill("delete")
    shot(page, "8-account")
    token_before = page.evaluate("sessionStorage.getItem('tips.session')")
    delete.click()
    expect(page.get_by_role("heading", name="Sign in to Tips")).to_be_visible()
    expect(page.get_by_role("status")).to_contain_text("Your account and its data are")
    shot(page, "9-deleted")
    assert page.evaluate("sessionStorage.getItem('tips.session')") is None
    old_token = json.loads(token_before)["accessToken"]
    old = httpx.get(
        gateway(mesh) + "/v1/users/me/profile",
        headers={"authorization": f"Bearer {old_token}"},
        timeout=30,
        trust_env=False,
    )
    assert old.status_code in (401, 404), old.text
    assert {p.name for p in SHOTS.glob("*.png")} >= {"1-tip.png", "7-consents.png", "9-deleted.png"}


def test_apple_sign_in_and_a_reaction_with_the_keyboard_only(mesh: RunningMesh, page: Page) -> None:
    page.goto(gateway(mesh) + "/app/")
    expect(page.get_by_role("heading", name="Sign in to Tips")).to_be_focused()
    tab_to(page, page.get_by_role("button", name="Sign in with Apple"))
    page.keyboard.press("Enter")
    login = page.get_by_label("Who signs in")
    login.fill(f"kb-{uuid.uuid4().hex[:8]}")
    login.press("Enter")  # Apple answers with a form post to /app/ (response_mode=form_post)
    expect(page.get_by_role("heading", name="Your tip")).to_be_focused()
    me = api(mesh, page, "GET", "/v1/users/me/sessions").json()["sessions"]
    assert [s["provider"] for s in me] == ["IDENTITY_PROVIDER_APPLE"]
    assert me[0]["deviceName"] == "Web (Chrome)"

    # From the heading, Tab reaches the tip's first reaction; Enter reacts. (Once
    # the tip has loaded: a Tab while it loads has nothing to reach.)
    expect(page.get_by_role("button", name="Done")).to_be_visible()
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Done")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("status")).to_contain_text("Marked done")
    # Focus moves on to the next step, not back to the start of the page.
    expect(page.get_by_role("button", name="Next tip")).to_be_focused()
    # Backwards from there: the last link of the main navigation.
    page.keyboard.press("Shift+Tab")
    expect(page.get_by_role("link", name="Account")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Account", exact=True)).to_be_focused()
    shot(page, "10-keyboard-account")

    # The skip link is the page's first stop and moves focus to the content.
    skip = page.get_by_role("link", name="Skip to content")
    skip.focus()
    page.keyboard.press("Enter")
    expect(page.locator("main")).to_be_focused()
    # ... and stays on this screen (the hash is the router's).
    expect(page.get_by_role("heading", name="Account", exact=True)).to_be_visible()


def connector_signals(mesh: RunningMesh, page: Page, connection: str) -> list[dict[str, Any]]:
    listed = api(mesh, page, "GET", "/v1/users/me/signals", params={"pageSize": 1000})
    assert listed.status_code == 200, listed.text
    return [s for s in listed.json().get("signals", []) if s.get("connection") == connection]


def test_connecting_fitbit_through_the_providers_consent_page(
    mesh: RunningMesh, page: Page
) -> None:
    sign_in(page, mesh, "Google", f"fit-{uuid.uuid4().hex[:8]}")
    # Fitbit activity's data needs the fitness consent first.
    page.get_by_role("link", name="Consents").click()
    page.get_by_role("button", name="Allow Fitness").click()
    expect(page.get_by_role("status")).to_have_text("Fitness: allowed.")

    page.get_by_role("link", name="Connections").click()
    row = (
        page.get_by_role("list", name="Providers")
        .get_by_role("listitem")
        .filter(has=page.get_by_text("Fitbit activity", exact=True))
    )
    row.get_by_role("button", name="Connect Fitbit activity").click()
    # The development provider's consent page (another origin).
    expect(page.get_by_role("heading", name="Allow Tips to read your Fitbit data?")).to_be_visible()
    expect(page.get_by_text("Development stand-in, not the real Fitbit.")).to_be_visible()
    expect(page.get_by_role("listitem").filter(has_text="steps")).to_be_visible()
    shot(page, "11-provider-consent")
    assert_fits_phone_and_labelled(page)
    allowed = time.monotonic()
    page.get_by_role("button", name="Allow").click()

    # Back on the Connections screen, told so, the code gone from the address bar.
    done = page.get_by_role("status").filter(has_text="Fitbit activity connected.")
    expect(done).to_be_visible()
    expect(page).to_have_url(re.compile(r"/app/#/connections$"))
    assert "code=" not in page.url and "state=" not in page.url
    expect(row).to_contain_text("Connected")
    expect(row.get_by_role("button", name="Sync Fitbit activity")).to_be_visible()
    landed = time.monotonic()
    [connection] = [
        c
        for c in api(mesh, page, "GET", "/v1/users/me/connections").json()["connections"]
        if c["provider"] == "providers/fitbit_activity"
    ]
    assert connection["state"] == "CONNECTION_STATE_ACTIVE"
    assert connection["grantedScopes"]

    # The first sync brings the week's steps (and workouts) in as the user's signals.
    deadline = time.monotonic() + WAIT_MS / 1000
    while not (signals := connector_signals(mesh, page, connection["name"])):
        assert time.monotonic() < deadline, "no signals from the first sync"
        time.sleep(0.2)
    first_signals = time.monotonic()
    kinds = {s["kind"] for s in signals}
    assert "SIGNAL_KIND_STEPS" in kinds and kinds <= {"SIGNAL_KIND_STEPS", "SIGNAL_KIND_WORKOUT"}
    assert all(s["source"] == "SIGNAL_SOURCE_CONNECTOR" for s in signals)
    print(
        f"Allow -> back on #/connections {landed - allowed:.2f} s, "
        f"-> first signals {first_signals - allowed:.2f} s ({len(signals)} signals)"
    )
    shot(page, "12-connected")
    assert_fits_phone_and_labelled(page)
    page.reload()
    expect(row).to_contain_text("last synced")


def test_denying_the_provider_connects_nothing_and_says_so(mesh: RunningMesh, page: Page) -> None:
    """On the app's other loopback name: the provider returns to the registered
    127.0.0.1 callback, which sends the browser on to this origin's screen."""
    sign_in(page, mesh, "Google", f"deny-{uuid.uuid4().hex[:8]}", host="localhost")
    granted = api(
        mesh,
        page,
        "POST",
        "/v1/users/me/consents/calendar-data-for-tips:grant",
        json={"textVersion": "v1", "source": "CONSENT_SOURCE_WEB"},
    )
    assert granted.status_code == 200, granted.text
    page.get_by_role("link", name="Connections").click()
    page.get_by_role("button", name="Connect Google Calendar").click()
    expect(
        page.get_by_role("heading", name="Allow Tips to read your Google Calendar data?")
    ).to_be_visible()
    # With the keyboard: Tab to Deny, Enter.
    tab_to(page, page.get_by_role("button", name="Deny"))
    page.keyboard.press("Enter")

    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("You did not allow Tips to read your Google Calendar data")
    expect(page).to_have_url(re.compile(r"^http://localhost:\d+/app/#/connections$"))
    shot(page, "13-provider-denied")
    [connection] = api(mesh, page, "GET", "/v1/users/me/connections").json()["connections"]
    assert connection["state"] == "CONNECTION_STATE_PENDING_AUTHORIZATION"
    assert not connector_signals(mesh, page, connection["name"])
    # The same connection can be authorized again from here.
    expect(page.get_by_role("button", name="Connect Google Calendar", exact=True)).to_be_enabled()


def test_a_stale_sign_in_callback_is_refused(mesh: RunningMesh, page: Page) -> None:
    """A redirect this tab did not start (a forged or replayed link) signs nobody in."""
    page.goto(gateway(mesh) + "/app/?code=stolen&state=not-mine")
    expect(page.get_by_role("alert")).to_contain_text("was not started here")
    assert "code=" not in page.url
    expect(page.get_by_role("button", name="Sign in with Google")).to_be_enabled()
    assert page.evaluate("sessionStorage.getItem('tips.session')") is None


def test_the_app_is_served_with_its_security_headers(mesh: RunningMesh) -> None:
    with httpx.Client(base_url=gateway(mesh), timeout=30, trust_env=False) as http:
        root = http.get("/")
        assert root.status_code == 302 and root.headers["location"] == "/app/"
        index = http.get("/app/")
        assert index.status_code == 200 and "text/html" in index.headers["content-type"]
        assert "connect-src 'self'" in index.headers["content-security-policy"]
        assert index.headers["referrer-policy"] == "no-referrer"
        assert index.headers["cache-control"] == "no-cache"
        script = re.search(r'src="\./(assets/[^"]+\.js)"', index.text)
        assert script, index.text
        asset = http.get(f"/app/{script.group(1)}")
        assert asset.status_code == 200 and "immutable" in asset.headers["cache-control"]
        missing = http.get("/app/no-such-file.js")
        assert missing.status_code == 404
        assert missing.json()["code"] == 5 and "no-such-file.js" in missing.json()["message"]
        # A form post without `state` is refused with the field named.
        bad = http.post(
            "/app/",
            content=b"code=x",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert bad.status_code == 400 and "`state`" in bad.json()["message"]
