"""``python -m analysis.screenshot REPORT_HTML OUT_PNG``: a PNG of a report page as a reader sees
it, the whole page from top to bottom, in headless Chromium (selenium with Debian's chromium and
chromium-driver, the browser the report's test opens the page in). For putting a picture of a
report in the documentation; the test takes its screenshot the same way."""

from __future__ import annotations

import argparse
import base64
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hpml_core.contract.errors import EXIT_FAILED, EXIT_USAGE

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
WIDTH = 1200  # px: the page's 1100 px column and its margins


def browser_paths() -> tuple[str, str] | None:
    """(browser, chromedriver) as installed, or None."""
    browser = next((path for path in map(shutil.which, BROWSERS) if path), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@contextmanager
def headless() -> Iterator:
    """A headless Chromium that records the page's console messages (``get_log("browser")``)."""
    found = browser_paths()
    if found is None:
        raise RuntimeError("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium import webdriver  # the dev extra: only this tool and the tests need it
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 f"--window-size={WIDTH},900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(service=Service(found[1]), options=options)
    except WebDriverException as exc:
        raise RuntimeError(f"chromium did not start: {exc.msg}") from exc
    try:
        yield driver
    finally:
        driver.quit()


def full_page_png(driver) -> bytes:
    """The loaded page, all of it (not only the window), as PNG bytes."""
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    return base64.b64decode(shot["data"])


def screenshot(page: Path, out: Path) -> None:
    with headless() as driver:
        driver.get(page.resolve().as_uri())
        png = full_page_png(driver)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(png)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.screenshot", description=__doc__.split("\n\n")[0])
    parser.add_argument("page", type=Path, metavar="REPORT_HTML")
    parser.add_argument("out", type=Path, metavar="OUT_PNG")
    args = parser.parse_args(argv)
    if not args.page.is_file():
        print(f"screenshot: error: REPORT_HTML: {args.page} is not a file", file=sys.stderr)
        return EXIT_USAGE
    try:
        screenshot(args.page, args.out)
    except ImportError:
        print("screenshot: error: needs selenium (pip install '.[dev]')", file=sys.stderr)
        return EXIT_FAILED
    except (RuntimeError, OSError) as exc:
        print(f"screenshot: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
