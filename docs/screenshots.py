"""Make the README's screenshots from a real store: the demo's caption job as a gallery.

    VICAP_HOME=/tmp/shot vicap-jobs demo          # prints the caption job id and the model name
    VICAP_HOME=/tmp/shot python docs/screenshots.py --job 3 --out docs/images/gallery.png

Serves the app on a free local port with uvicorn, opens the job page in the system chromium
(Playwright, no browser download) and saves a 1280×900 screenshot.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import threading
import time

import uvicorn
from playwright.sync_api import sync_playwright

from vicap_jobs.web.app import create_app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", type=int, required=True, help="caption job to show")
    parser.add_argument("--out", default="docs/images/gallery.png")
    args = parser.parse_args()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(), log_level="warning"))
    threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"http://127.0.0.1:{port}/jobs/{args.job}")
        page.wait_for_load_state("networkidle")
        page.screenshot(path=args.out)
        browser.close()
    server.should_exit = True


if __name__ == "__main__":
    main()
