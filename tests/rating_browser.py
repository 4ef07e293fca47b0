"""Drive the rating page (nbs/62_ratings, stage rating_kit) in headless Chromium like a rater: keyboard and mouse, a
reload in the middle (answers must survive), then Export CSV. Uses Debian's /usr/bin/chromium (`make browser`)."""
import os, tempfile
from pathlib import Path

from jupyter_browser import CHROMIUM, CHROMIUM_ARGS


def rate_page(page_file: Path, export_to: Path, rater: str = "dr_a") -> dict:
    """Rate the first two generation items and the first audit item, reload, check, export. Returns what was answered
    (by letter and item) and what the page showed after the reload."""
    from playwright.sync_api import sync_playwright
    if not CHROMIUM.exists(): raise RuntimeError(f"{CHROMIUM} is missing: run `make browser` (apt-get install chromium)")
    errors, seen = [], {}
    with tempfile.TemporaryDirectory(prefix="chromium-home-") as home, sync_playwright() as pw:
        env = {**os.environ, "HOME": home, "XDG_CONFIG_HOME": f"{home}/.config", "XDG_CACHE_HOME": f"{home}/.cache"}
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS, env=env)
        try:
            context = browser.new_context(accept_downloads=True, viewport={"width": 1500, "height": 1000})
            page = context.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(page_file.resolve().as_uri())
            page.wait_for_selector(".video img")
            seen["images_loaded"] = page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
            page.fill("#rater", rater)
            # item 1, by keyboard: distortion of every video (A: none, B: severe, the rest minor), best text alignment = B,
            # medical accuracy: none (Shift+M); visual quality by the mouse: A
            page.locator("body").click(position={"x": 5, "y": 200})  # focus the page, not the name field
            n = page.locator(".video").count()
            for i in range(n):
                page.keyboard.press({0: "1", 1: "4"}.get(i, "2"))
                if i == 1: page.keyboard.press("t")
                page.keyboard.press("ArrowRight")
            page.keyboard.press("Shift+M")
            page.locator("fieldset.dimension").nth(2).locator("label").nth(0).click()  # visual quality: A, with the mouse
            seen["item1_status"] = page.locator(".done, .todo").inner_text()
            # item 2: the mouse for distortion of A, the keyboard for the rest of A's answers
            page.keyboard.press("n")
            page.locator(".video").nth(0).locator("label").nth(2).click()  # A: moderate
            page.locator("body").click(position={"x": 5, "y": 200})
            page.keyboard.press("v")  # visual quality: the focused video (A)
            # reload: the answers and the rater's name must come back
            page.reload(); page.wait_for_selector(".video img")
            seen["after_reload_progress"] = page.inner_text("#progress")
            seen["after_reload_rater"] = page.input_value("#rater")
            seen["after_reload_item2_A_moderate"] = page.locator(".video").nth(0).locator("input").nth(2).is_checked()
            page.keyboard.press("p")
            seen["after_reload_item1_B_severe"] = page.locator(".video").nth(1).locator("input").nth(3).is_checked()
            seen["item1_status_after_reload"] = page.locator(".done, .todo").inner_text()
            # the first audit item, by keyboard: noisy (3)
            items = page.evaluate("DATA.items.map(i => i.kind)")
            page.keyboard.press("n")
            for _ in range(items.index("audit") - 1): page.keyboard.press("n")
            page.keyboard.press("3")
            with page.expect_download() as download:
                page.click("#export")
            download.value.save_as(export_to)
            seen["status"] = page.inner_text("#status")
            seen["letters"] = page.evaluate("DATA.items.slice(0, 2).map(i => i.videos.map(v => [v.letter, v.video]))")
            seen["items"] = page.evaluate("DATA.items.map(i => i.item)")
            seen["audit_item"] = seen["items"][items.index("audit")]
        finally:
            browser.close()
    seen["errors"] = errors
    return seen
