"""Headless Debian Chromium through Selenium, for the playground's tests and screenshots.

Debian's `chromium` and `chromium-driver` packages (`.ci/run` installs them when missing):
the driver is named explicitly, so Selenium Manager never downloads a browser or driver.
"""

from __future__ import annotations

import shutil
from pathlib import Path

CHROMIUM_BINARIES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
DRIVER_BINARIES = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")


def _first(paths: tuple[str, ...], name: str) -> str | None:
    found = [p for p in paths if Path(p).is_file()]
    return found[0] if found else shutil.which(name)


def chromium_paths() -> tuple[str, str] | None:
    """(browser, driver) when both are installed, else None."""
    browser, driver = _first(CHROMIUM_BINARIES, "chromium"), _first(DRIVER_BINARIES, "chromedriver")
    return (browser, driver) if browser and driver else None


def chromium(width: int = 1280, height: int = 900, scale: float = 1.0):  # -> selenium WebDriver
    """A headless Chromium window of width x height CSS pixels (`scale`: device pixel ratio, for sharper screenshots)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    paths = chromium_paths()
    if paths is None:
        raise RuntimeError("Debian's chromium and chromium-driver are not installed (apt-get install -y chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI and containers run as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--force-color-profile=srgb",
        "--lang=en-US",
        f"--window-size={width},{height}",
        f"--force-device-scale-factor={scale}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=paths[1]))
    driver.set_window_size(width, height)
    return driver


def wait_for(driver, script: str, *args: object, timeout: float = 30.0) -> object:
    """Run `script` (JavaScript returning a value) until it returns something truthy; that value."""
    from selenium.webdriver.support.wait import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: d.execute_script(script, *args))


def open_playground(driver, base_url: str) -> None:
    """Load GET /playground and wait until it has built its panels from GET /models."""
    driver.get(f"{base_url}/playground")
    wait_for(driver, "return document.body.dataset.ready === 'true'")
