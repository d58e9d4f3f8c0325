"""Take the playground screenshot of the README (docs/playground.png), loopback only.

    python scripts/playground_screenshot.py                      # the bundled model
    python scripts/playground_screenshot.py --weights random:tiny --out /tmp/shot.png

Starts the API (uvicorn, this repository's app, keys off) and one worker on a private queue of
UNCLIP_REDIS_URL, opens the page in Debian's chromium (Playwright, no browser download), generates
four images, asks for variations of the first and takes the screenshot while those form (the
per-stage bars and the preview), then stops everything.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import uvicorn
from redis import Redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from contract.settings import Settings  # noqa: E402
from service.main import create_app  # noqa: E402

PROMPT = "a large red circle in the center on a white background"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_worker(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "UNCLIP_WORKER_METRICS_PORT": str(free_port())}
    for name, value in settings.model_dump().items():
        if value is not None and not isinstance(value, list | tuple):
            env[f"UNCLIP_{name.upper()}"] = str(value)
    name = f"shot-{uuid.uuid4().hex[:6]}"
    worker = subprocess.Popen(
        [sys.executable, "-m", "workers.main", "--name", name],
        cwd=REPO,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    redis = Redis.from_url(settings.redis_url)
    deadline = time.monotonic() + 300
    while f"rq:worker:{name}".encode() not in redis.smembers(f"rq:workers:{settings.queue}"):
        if worker.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the worker did not start: {log.read_text()[-2000:]}")
        time.sleep(0.2)
    return worker


def shoot(url: str, out: Path, size: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("no chromium: apt-get install chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 1000}, device_scale_factor=1)
        page.goto(url)
        page.fill("#prompt", PROMPT)
        page.fill("#n", "4")
        page.select_option("#size", size)
        page.fill("#seed", "7")
        page.click("#generate")
        first = page.locator(".job").first
        first.locator(".grid img").nth(3).wait_for(timeout=600_000)
        for image in first.locator(".grid img").all():
            expect(image).to_have_js_property("complete", True)
        first.locator(".grid figure").first.locator("button.variations").click()
        live = page.locator(".job").filter(has=page.locator(".kind", has_text="variations"))
        live.locator(".preview").wait_for(state="visible", timeout=600_000)
        live.locator(".bars [data-stage='decoder']").wait_for(timeout=600_000)
        page.screenshot(path=str(out), full_page=True)
        browser.close()
    from PIL import Image  # a palette PNG: the page has few colours

    Image.open(out).convert("RGB").quantize(colors=256).save(out, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", default=None, help="a model directory or random:tiny (default: bundled)")
    parser.add_argument("--size", default="256x256")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "playground.png")
    args = parser.parse_args(argv)
    storage = Path(tempfile.mkdtemp(prefix="unclip-shot-"))
    settings = Settings(
        redis_url=os.environ.get("UNCLIP_REDIS_URL", "redis://127.0.0.1:6379/9"),
        queue=f"shot-{uuid.uuid4().hex[:10]}",
        storage_dir=storage,
        weights=args.weights,
        device="cpu",
        require_api_keys=False,
        worker_threads=1,
    )
    worker = start_worker(settings, storage / "worker.log")
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        shoot(f"http://127.0.0.1:{port}/", args.out, args.size)
        print(f"wrote {args.out}")
    finally:
        server.should_exit = True
        thread.join(10)
        worker.terminate()
        worker.wait(60)
        shutil.rmtree(storage, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
