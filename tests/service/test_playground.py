"""The web playground in a real headless browser: Debian's chromium driven by Playwright's Python
package (no browser download), against uvicorn serving the app, a real worker on the tiny model
with random weights and a real Redis, API keys on. Skips when no chromium is installed
(`apt-get install chromium`; `.ci/run` installs it)."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from contract.settings import Settings
from tests.service.conftest import service_settings

pytestmark = pytest.mark.slow  # a browser, a worker process and uvicorn

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
if CHROMIUM is None:
    pytest.skip(
        "no chromium browser installed (apt-get install chromium; .ci/run installs it)",
        allow_module_level=True,
    )

# Records every value the page gives a progress bar, before the page's own script runs.
WATCH_BARS = """
window.__bars = [];
new MutationObserver((changes) => {
  for (const change of changes) {
    if (change.target.matches && change.target.matches("progress.overall")) {
      window.__bars.push(Number(change.target.getAttribute("value")));
    }
  }
}).observe(document, { attributes: true, subtree: true, attributeFilter: ["value"] });
"""


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return service_settings(
        tmp_path_factory,
        "web",
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, api: str) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.add_init_script(WATCH_BARS)
    page.goto(f"{api}/")
    yield page
    context.close()
    assert not errors, errors  # no uncaught exception in the page's script, no CSP violation


def test_the_page_and_its_files_are_served_without_a_key(api: str) -> None:
    page = httpx.get(f"{api}/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="/static/playground.js"' in page.text
    for name, kind in (("playground.js", "text/javascript"), ("playground.css", "text/css")):
        asset = httpx.get(f"{api}/static/{name}", timeout=10)
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
    assert httpx.get(f"{api}/static/../main.py", timeout=10).status_code == 404
    assert httpx.get(f"{api}/static/index.html", timeout=10).status_code == 404  # only the assets
    assert httpx.get(f"{api}/v1/models", timeout=10).status_code == 401  # what the page calls needs a key


def test_generate_watch_it_form_then_make_variations(page: Any, token: str) -> None:
    p = page  # a playwright Page
    p.fill("#api-key", token)
    p.fill("#prompt", "a large red circle in the center on a white background")
    p.fill("#n", "2")
    p.select_option("#size", "64x64")
    p.click("summary")
    p.fill("#steps-prior", "1")
    p.fill("#steps-decoder", "40")
    p.click("#generate")

    card = p.locator(".job").first
    card.locator(".grid img").nth(1).wait_for(timeout=60_000)
    assert card.get_attribute("data-status") == "succeeded"
    assert card.locator(".kind").text_content() == "generate"
    for image in card.locator(".grid img").all():
        sync_api.expect(image).to_have_js_property("naturalWidth", 64)  # loaded, through the signed URL
    seen = p.evaluate("window.__bars")
    assert any(0 < value < 1 for value in seen), seen  # the bar moved through the chain ...
    assert seen[-1] == 1 and seen == sorted(seen)  # ... forwards, to the end
    stages = card.locator(".bars [data-stage]").evaluate_all("labels => labels.map((l) => l.dataset.stage)")
    assert "decoder" in stages
    assert p.evaluate("localStorage.getItem('unclip.apiKey')") == token

    card.locator(".grid figure").first.locator("button.variations").click()
    variations = p.locator(".job").filter(has=p.locator(".kind", has_text="variations"))
    variations.locator(".grid img").nth(1).wait_for(timeout=120_000)
    assert variations.get_attribute("data-status") == "succeeded"
    assert p.locator(".job").count() == 2 and p.locator(".job").first.get_attribute("data-job") == (
        variations.get_attribute("data-job")
    )  # the newest card comes first
    for image in variations.locator(".grid img").all():
        sync_api.expect(image).to_have_js_property("naturalWidth", 64)
    assert p.text_content("#message") == ""


def test_edit_mode_repaints_only_what_was_painted(page: Any, token: str, tmp_path: Any) -> None:
    source = tmp_path / "green.png"
    Image.new("RGB", (80, 64), (30, 160, 40)).save(source)  # centre-cropped to 64x64 by the page
    p = page
    p.fill("#api-key", token)
    p.fill("#n", "1")
    p.select_option("#size", "64x64")
    p.click(".tab[data-tab='edit']")
    p.set_input_files("#edit-file", str(source))
    sync_api.expect(p.locator("#edit-image")).to_have_js_property("width", 64)
    box = p.locator("#edit-mask").bounding_box()
    p.fill("#brush", "64")
    # Paint down the right quarter of the canvas with the mouse.
    x = box["x"] + box["width"] * 0.85
    p.mouse.move(x, box["y"] + 2)
    p.mouse.down()
    for k in range(1, 11):
        p.mouse.move(x, box["y"] + box["height"] * k / 10, steps=2)
    p.mouse.up()
    p.fill("#edit-prompt", "a blue star")
    p.click("#edit")

    edit = p.locator(".job").filter(has=p.locator(".kind", has_text="edit"))
    edit.locator(".grid img").first.wait_for(timeout=120_000)
    assert edit.get_attribute("data-status") == "succeeded"
    url = edit.locator(".grid img").first.get_attribute("src")
    result = Image.open(io.BytesIO(httpx.get(url, timeout=10).content)).convert("RGB")
    assert result.size == (64, 64)
    assert result.getpixel((4, 32)) == pytest.approx((30, 160, 40), abs=3)  # left: kept
    assert result.getpixel((54, 32)) != pytest.approx((30, 160, 40), abs=3)  # under the stroke: redrawn
