"""The sale console in a real browser (Debian's chromium, headless, driven by Playwright).

Run by tests/api/console.rs while a sale runs: python3 check.py <base url> <admin token>
<campaign id> [screenshot path]. Exits non-zero, saying why, if the page logs an error, if an
action without a token is not refused, if its figures do not move during the sale, or if
they do not match the API once the sale is over."""
import json, sys, time, urllib.request
from playwright.sync_api import sync_playwright

base, token, campaign = sys.argv[1], sys.argv[2], sys.argv[3]
screenshot = sys.argv[4] if len(sys.argv) > 4 else None


def api(path):
    request = urllib.request.Request(base + path, headers={"Authorization": "Bearer " + token})
    with urllib.request.urlopen(request) as answer:
        return json.loads(answer.read())


def fail(why):
    print("console check failed:", why, flush=True)
    sys.exit(1)


with sync_playwright() as p:
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": 1280, "height": 720})
    errors = []
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    external = []
    page.on("request", lambda r: external.append(r.url) if not r.url.startswith(base) else None)

    page.goto(base + "/console")
    if page.title() != "flashsale console":
        fail(f"title {page.title()!r}")

    # Without a token: asked for one, and an action is refused by the API.
    page.locator("#message", has_text="token").wait_for()
    page.fill("#create input[name=id]", "from-console-without-token")
    page.fill("#create input[name=sku]", "x")
    page.fill("#create input[name=stock]", "5")
    page.click("#create button")
    page.locator("#message", has_text="401").wait_for()
    message = page.inner_text("#message")
    if "unauthenticated" not in message:
        fail(f"an action without a token: {message!r}")
    # The refused call's 401 is the browser's own console line; everything before is clean.
    errors = [e for e in errors if "401" not in e]

    page.fill("#token", token)
    page.click("#login button")
    row = f"#campaigns tr[data-campaign='{campaign}']"
    page.wait_for_selector(row, timeout=10_000)

    def figures():
        return {f: page.inner_text(f"{row} td[data-field={f}]").replace(",", "")
                for f in ["available", "held", "confirmed", "stock", "attempts"]}

    # During the sale the figures move, and attempts per second show.
    first = figures()
    moved, busy = False, False
    deadline = time.time() + 8
    while time.time() < deadline and not (moved and busy):
        time.sleep(0.5)
        now = figures()
        moved = moved or now["available"] != first["available"]
        busy = busy or (now["attempts"] not in ("0", "–"))
    if not moved:
        fail(f"the units did not move during the sale: {first} then {now}")
    if not busy:
        fail("attempts per second never showed during the sale")
    # The page showed the sale: the test stops it now.
    print("moved", flush=True)
    if screenshot:
        page.screenshot(path=screenshot, full_page=True)

    # Once the sale is over, the page says what the API says.
    deadline = time.time() + 20
    while True:
        truth = api(f"/v1/campaigns/{campaign}")
        time.sleep(1.5)
        shown = figures()
        expected = {f: str(truth[f]) for f in ["available", "held", "confirmed", "stock"]}
        if all(shown[f] == expected[f] for f in expected) and api(f"/v1/campaigns/{campaign}") == truth:
            break
        if time.time() > deadline:
            fail(f"the page shows {shown}, the API {expected}")

    # An action with the token works: the campaign ends.
    page.click(f"{row} button[data-action=end]")
    page.locator("#message", has_text="ended").wait_for()

    if errors:
        fail("; ".join(errors))
    if external:
        fail(f"resources from elsewhere: {external}")
    browser.close()
print("console check passed", flush=True)
