"""Screenshots of the playground page for the README: desktop and phone width, after a real session.

    .venv/bin/python docs/screenshots.py     # writes docs/playground-desktop.png and docs/playground-phone.png

Starts a real `bentoml serve` on the shipped models (models/), drives headless Debian
Chromium (tests/browser.py): two photos classified, the example reviews and house sent,
one model card opened with its plots loaded.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image
from selenium.webdriver.common.by import By

from benchmarks.launch import ROOT, start_server
from tests.browser import chromium, open_playground, wait_for

OUT = ROOT / "docs"
PHOTOS = [ROOT / "tests" / "fixtures" / "cat.jpg", ROOT / "tests" / "fixtures" / "dog.jpg"]
# name, width (CSS pixels), device pixel ratio, photos sent, height cap (CSS pixels)
DESKTOP = ("playground-desktop.png", 1280, 1.0, PHOTOS, None)
PHONE = ("playground-phone.png", 390, 2.0, PHOTOS[:1], 2900)  # the header, every panel's top; the rest repeats the desktop shot
PAGE_HEIGHTS = "return [Math.ceil(document.documentElement.getBoundingClientRect().height), innerHeight, outerHeight]"
CARD = "image_classification"  # whose model card is opened (a kind, not a model name)


def play(driver, base_url: str, photos: list[Path]) -> None:
    """What a visitor does: photos, the prefilled reviews and house, one model card."""
    open_playground(driver, base_url)
    driver.find_element(By.CSS_SELECTOR, "[data-kind=image_classification] input[type=file]").send_keys("\n".join(map(str, photos)))
    wait_for(driver, "return document.querySelectorAll('.thumb[data-label]').length === arguments[0]", len(photos))
    for kind in ("text_classification", "tabular_regression"):
        driver.find_element(By.CSS_SELECTOR, f"[data-kind={kind}] button[type=submit]").click()
    wait_for(driver, "return document.querySelector('.text-result') && document.querySelector('.prediction .value')")
    model = driver.execute_script(f"return document.querySelector('[data-kind={CARD}]').dataset.model")
    driver.find_element(By.CSS_SELECTOR, f"#card-{model} summary").click()
    wait_for(driver, f"return [...document.querySelectorAll('#card-{model} img')].every(i => i.complete && i.naturalWidth > 0)")
    driver.execute_script("window.scrollTo(0, 0); document.activeElement.blur()")


def shoot(base_url: str, name: str, width: int, scale: float, photos: list[Path], max_height: int | None) -> Path:
    driver = chromium(width, 900, scale)
    try:
        play(driver, base_url, photos)
        for _ in range(5):  # a taller window lays the page out again (lazy plots load): until the height settles
            page, inner, outer = driver.execute_script(PAGE_HEIGHTS)
            height = min(page, max_height or page)
            if inner == height:
                break
            driver.set_window_size(width, height + outer - inner)  # the window's size includes its frame
            wait_for(driver, "return new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))")
        path = OUT / name
        driver.save_screenshot(str(path))
    finally:
        driver.quit()
    Image.open(path).save(path, optimize=True)
    return path


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(ROOT / "models", Path(tmp) / "server.log")
        try:
            for shot in (DESKTOP, PHONE):
                path = shoot(server.url, *shot)
                width, height = Image.open(path).size
                print(f"{path.relative_to(ROOT)}: {width}x{height}, {path.stat().st_size // 1024} KiB")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
