"""The web view in a real browser (the system chromium through Playwright) against the app served by uvicorn.

What TestClient cannot show: that live.js really updates the dashboard while a job runs, that
thumbnails decode in the browser, that markup in a file name stays text when a browser parses
the page, that the try-it form uploads through a real multipart POST.

The running-job test runs the first chunk, waits until the browser shows that partial count, then
runs the rest: a gate rather than fixed pauses, so a slow machine cannot skip past the
intermediate state between two polls (and the test takes ~5 s, not chunks × pause). Each test saves a
full-page screenshot under its tmp_path (the README's screenshot comes from the demo's store:
``docs/screenshots.py``).
"""

from __future__ import annotations

import re
import threading
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Dialog, Page, Playwright, ViewportSize, expect, sync_playwright

from tests.conftest import skip_or_fail
from tests.web.browser import find_chromium, noise_image, png_bomb, serve, truncated_jpeg
from tests.web.conftest import XSS_NAME, WebStore
from tests.worker.conftest import make_image_folder
from vicap_jobs.db.session import session_scope
from vicap_jobs.jobs.chunks import open_chunk_ids
from vicap_jobs.pipeline.runner import run_chunk
from vicap_jobs.services.captioning import create_caption_job
from vicap_jobs.services.model_engines import EngineCache

REPO = Path(__file__).resolve().parents[2]
VIEWPORT: ViewportSize = {"width": 1280, "height": 800}
WAIT_MS = 15_000
VIETNAMESE_WORDS = ("đỏ", "bức", "ảnh", "màu", "mèo", "chó", "trên", "bàn", "cỏ", "xanh", "một", "con")
"""Words of the tiny models' vocabulary (tests.worker.conftest.REFERENCE_CAPTIONS) that carry diacritics."""


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    executable = find_chromium()
    if executable is None:
        skip_or_fail("chromium is not installed (apt-get install chromium); browser tests need it")
    launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"], headless=True)
    yield launched
    launched.close()


@pytest.fixture(scope="module")
def base_url(web_store: WebStore) -> Iterator[str]:
    with serve(web_store.app()) as url:
        yield url


def open_page(browser: Browser, base_url: str) -> tuple[Page, list[str]]:
    """A fresh page (own context) on ``base_url``, and the list its uncaught script errors go to."""
    page = browser.new_context(viewport=VIEWPORT, base_url=base_url).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return page, errors


@pytest.fixture()
def page(browser: Browser, base_url: str) -> Iterator[Page]:
    tab, errors = open_page(browser, base_url)
    yield tab
    tab.context.close()
    assert not errors, f"uncaught script errors on the page: {errors}"


def screenshot(page: Page, path: Path) -> Path:
    page.screenshot(path=path, full_page=True)
    assert path.is_file() and path.stat().st_size > 0
    return path


def run_chunks_after(
    store: WebStore, job_id: int, first_done: threading.Event, go_on: threading.Event, failures: list[BaseException]
) -> None:
    """Run the job's first chunk, wait until the test has seen it in the browser, then run the rest."""
    try:
        cache = EngineCache(db=store.db)
        with session_scope(store.db) as session:
            chunk_ids = open_chunk_ids(session=session, job_id=job_id)
        for index, chunk_id in enumerate(chunk_ids):
            run_chunk(db=store.db, chunk_id=chunk_id, engines=cache, worker_name="test-browser")
            if index == 0:
                first_done.set()
                if not go_on.wait(timeout=60):
                    raise TimeoutError("the browser never showed the partial progress")
    except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
        failures.append(exc)
        first_done.set()


def test_dashboard_follows_a_running_caption_job_without_reloading(
    page: Page, web_store: WebStore, tmp_path: Path
) -> None:
    """The dashboard row of a new caption job goes queued 0/12 → running 3/12 → succeeded 12/12 by polling alone."""
    make_image_folder(tmp_path / "live", 12, size=32)
    plan = create_caption_job(
        db=web_store.db,
        folder=tmp_path / "live",
        model="tiny-a",
        engine_name="torch",
        recursive=False,
        batch_size=2,
        chunk_size=3,
    )
    assert len(plan.chunk_ids) == 4
    page.goto("/")
    row = page.locator(f"tr.job[data-job-id='{plan.job_id}']")
    expect(row.locator(".count")).to_have_text("0/12")
    expect(row.locator(".badge")).to_have_text("queued")
    page.evaluate("window.__notReloaded = true")
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))

    first_done, go_on = threading.Event(), threading.Event()
    failures: list[BaseException] = []
    worker = threading.Thread(target=run_chunks_after, args=(web_store, plan.job_id, first_done, go_on, failures))
    worker.start()
    try:
        assert first_done.wait(timeout=60) and not failures, failures
        expect(row.locator(".count")).to_have_text("3/12", timeout=WAIT_MS)
        expect(row.locator(".badge")).to_have_text("running")
        expect(row.locator("progress")).to_have_attribute("value", "3")
        screenshot(page, tmp_path / "dashboard-running.png")
    finally:
        go_on.set()
        worker.join(timeout=120)
    assert not failures, failures
    expect(row.locator(".count")).to_have_text("12/12", timeout=WAIT_MS)
    expect(row.locator(".badge")).to_have_text("succeeded", timeout=WAIT_MS)
    expect(row.locator("progress")).to_have_attribute("value", "12")
    assert page.evaluate("window.__notReloaded === true"), "the page reloaded"
    assert navigations == []
    screenshot(page, tmp_path / "dashboard-done.png")


def test_gallery_shows_thumbnails_and_vietnamese_captions_and_file_names_as_text(
    page: Page, web_store: WebStore, tmp_path: Path
) -> None:
    """Every good tile's thumbnail decodes, captions keep their (NFC) diacritics, a markup file name stays text."""
    dialogs: list[str] = []

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.goto(f"/jobs/{web_store.caption_job}")
    tiles = page.locator("ul.gallery li.tile")
    expect(tiles).to_have_count(7)
    expect(page.locator("li.tile.ok")).to_have_count(6)
    page.wait_for_function(
        "() => [...document.querySelectorAll('li.tile.ok img')]"
        ".every(img => img.complete && img.naturalWidth > 0 && img.naturalHeight > 0)",
        timeout=WAIT_MS,
    )

    captions = page.locator("li.tile.ok .caption").all_inner_texts()
    assert len(captions) == 6 and all(text.strip() for text in captions), captions
    assert all(text == unicodedata.normalize("NFC", text) for text in captions)
    words = {word for text in captions for word in text.split()}
    assert words & set(VIETNAMESE_WORDS), f"no Vietnamese word with diacritics in {captions}"

    xss_tile = tiles.filter(has=page.locator(".file", has_text="onerror"))
    expect(xss_tile).to_have_count(1)
    expect(xss_tile.locator(".file")).to_have_text(XSS_NAME)
    assert page.locator("img[src='x']").count() == 0
    assert page.evaluate("[...document.scripts].filter(s => s.text.includes('alert')).length") == 0

    screenshot(page, tmp_path / "gallery.png")

    page.locator("nav.filters a", has_text=re.compile(r"^error$")).click()
    page.wait_for_url(re.compile(r"status=error"))
    expect(tiles).to_have_count(1)
    expect(tiles.locator(".file")).to_have_text("truncated.jpg")
    reason = tiles.locator(".error").inner_text().strip()
    assert "truncated" in reason and "\n" not in reason and "Traceback" not in reason and len(reason) < 200, reason
    screenshot(page, tmp_path / "gallery-errors.png")
    assert dialogs == [], f"a script in the page opened dialogs: {dialogs}"


def test_model_page_charts_scores_and_shows_samples_with_references(page: Page, tmp_path: Path) -> None:
    """/models/tiny-a draws its score history as SVG lines and lists test samples with their references."""
    page.goto("/models/tiny-a")
    chart = page.locator("svg.chart")
    expect(chart).to_be_visible()
    assert chart.locator("polyline.series").count() >= 2
    assert all(
        points.strip()
        for points in chart.locator("polyline.series").evaluate_all("ls => ls.map(l => l.getAttribute('points'))")
    )
    samples = page.locator("ul.samples > li")
    assert samples.count() >= 1
    first = samples.first
    expect(first.locator(".caption")).to_contain_text("tiny-a:")
    references = first.locator("ul.references li").all_inner_texts()
    assert references and all(r.strip() for r in references), references
    assert set(" ".join(references).split()) & set(VIETNAMESE_WORDS)
    screenshot(page, tmp_path / "model.png")


def test_compare_shows_two_models_side_by_side_with_references(page: Page, tmp_path: Path) -> None:
    """/compare?a=tiny-a&b=tiny-b fills both caption columns on every row and lists each image's references."""
    page.goto("/compare?a=tiny-a&b=tiny-b")
    rows = page.locator("table.compare tbody tr")
    expect(rows).to_have_count(6)  # both evaluated coco-mini's test split of 6 images
    for side in ("side-a", "side-b"):
        texts = rows.locator(f"td.{side}").all_inner_texts()
        assert len(texts) == rows.count() and all(t.strip() for t in texts), (side, texts)
    for index in range(rows.count()):
        references = rows.nth(index).locator("ul.references li").all_inner_texts()
        assert references and all(r.strip() for r in references)
    screenshot(page, tmp_path / "compare.png")


def test_try_it_uploads_a_photo_and_shows_its_caption(page: Page, tmp_path: Path) -> None:
    """The try-it form posts a photo with model tiny-a and engine torch and shows the caption it got."""
    photo = noise_image(tmp_path / "cat.png")
    page.goto("/try")
    page.set_input_files("input[name=photo]", str(photo))
    page.select_option("select[name=model]", "tiny-a")
    page.select_option("select[name=engine]", "torch")
    with page.expect_navigation() as navigation:
        page.locator("form.try button[type=submit]").click()
    response = navigation.value
    assert response is not None and response.status == 200
    caption = page.locator("p.caption.big")
    expect(caption).not_to_be_empty()
    assert caption.inner_text().strip()
    expect(page.locator(".result .muted")).to_contain_text("tiny-a · torch · 48×48")
    expect(page.locator("p.error-message")).to_have_count(0)
    screenshot(page, tmp_path / "try.png")


def text_named_jpg(path: Path) -> Path:
    path.write_text("this is not a photo, just text\n", encoding="utf-8")
    return path


HOSTILE_UPLOADS = {  # kind: (how to write it into a folder, what the message must say)
    "truncated-jpeg": (lambda folder: truncated_jpeg(folder / "truncated.jpg"), r"truncated"),
    "text-named-jpg": (lambda folder: text_named_jpg(folder / "photo.jpg"), r"not an image"),
    "png-bomb-20000x20000": (lambda folder: png_bomb(folder / "bomb.png", side=20_000), r"20000×20000 .*limit"),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE_UPLOADS))
def test_a_hostile_upload_gets_a_readable_error_and_the_server_keeps_serving(
    browser: Browser, web_store: WebStore, tmp_path: Path, kind: str
) -> None:
    """Each hostile upload shows one readable line (no traceback, no 500) and the dashboard still loads after it."""
    write, expected = HOSTILE_UPLOADS[kind]
    upload = write(tmp_path)
    with serve(web_store.app(web_max_upload_pixels="1000000")) as url:
        page, errors = open_page(browser, url)
        try:
            page.goto("/try")
            page.set_input_files("input[name=photo]", str(upload))
            page.select_option("select[name=model]", "tiny-a")
            page.select_option("select[name=engine]", "torch")
            with page.expect_navigation() as navigation:
                page.locator("form.try button[type=submit]").click()
            response = navigation.value
            assert response is not None and 400 <= response.status < 500, response and response.status
            message = page.locator("p.error-message")
            expect(message).to_be_visible()
            text = message.inner_text().strip()
            assert re.search(expected, text) and "\n" not in text and len(text) < 200, text
            for leak in ("Traceback", "Internal Server Error", 'File "', "Exception"):
                assert leak not in text and leak not in page.content(), (leak, text)
            expect(page.locator("p.caption.big")).to_have_count(0)
            screenshot(page, tmp_path / "hostile.png")

            dashboard = page.goto("/")
            assert dashboard is not None and dashboard.status == 200
            expect(page.locator("h1", has_text="Jobs")).to_be_visible()
        finally:
            page.context.close()
        assert not errors, errors
