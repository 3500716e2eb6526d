"""The marketplace in a real Chromium: the walk, the keyboard, hostile content, screenshots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from .conftest import DESKTOP, HOSTILE_ID, PHONE, Site

#: Every element, attribute and URL that could run: what the DOM must not hold.
_DOM_AUDIT = """
const out = {scripts: [], handlers: [], js_urls: [], styles: [], frames: 0, pwned: window.__pwned};
for (const s of document.scripts) {
  out.scripts.push(s.src || ('inline:' + s.textContent.slice(0, 40)));
}
for (const el of document.querySelectorAll('*')) {
  for (const a of el.attributes) {
    if (a.name.startsWith('on')) out.handlers.push(el.tagName + ' ' + a.name);
    if (a.name === 'style') out.styles.push(el.tagName);
    if (['href', 'src', 'action', 'formaction', 'xlink:href'].includes(a.name)
        && /^\\s*(javascript|data|vbscript):/i.test(a.value)) out.js_urls.push(a.value);
  }
}
out.frames = document.querySelectorAll('iframe, object, embed, img').length;
return out;
"""


def audit(driver: Any, origin: str) -> None:
    found = driver.execute_script(_DOM_AUDIT)
    assert found["pwned"] is None, found
    assert found["scripts"] == [f"{origin}/assets/site.js?v=" + found["scripts"][0].split("=")[-1]]
    assert found["handlers"] == [], found
    assert found["js_urls"] == [], found
    assert found["styles"] == [], found
    assert found["frames"] == 0, found


def csp_violations(driver: Any) -> list[str]:
    """What the console says the CSP refused, and any uncaught script error."""
    return [e["message"] for e in driver.get_log("browser")
            if any(w in e["message"] for w in ("Content Security Policy", "Refused to",
                                               "Uncaught"))]


def test_walk_from_search_to_a_plugin_page(browser: Any, site: Site) -> None:
    browser.get(site.url + "/")
    box = browser.find_element(By.ID, "home-q")
    box.send_keys("pytset", Keys.ENTER)  # a typo
    WebDriverWait(browser, 10).until(ec.url_contains("/search?q=pytset"))
    note = browser.find_element(By.CSS_SELECTOR, ".corrected").text
    assert "Showing results for pytest" in note
    first = browser.find_element(By.CSS_SELECTOR, ".results .result h3 a")
    assert first.get_attribute("href").endswith("/plugins/pypi.pytest")
    first.click()
    WebDriverWait(browser, 10).until(ec.url_contains("/plugins/pypi.pytest"))
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith("pytest")
    copy = browser.find_element(By.CSS_SELECTOR, "button.copy")
    assert copy.is_displayed()  # the script ran (from /assets, allowed by the CSP)
    assert "corral install pypi.pytest" in browser.find_element(By.ID, "install-cmd").text
    assert csp_violations(browser) == []


def _focused(driver: Any) -> dict[str, str]:
    return driver.execute_script("""
        const el = document.activeElement; const cs = getComputedStyle(el);
        return {tag: el.tagName, id: el.id, href: el.getAttribute('href') || '',
                cls: (el.closest('.result') ? 'result' : ''),
                outline: cs.outlineStyle, width: cs.outlineWidth};""")


def _tab_until(driver: Any, want: Any, limit: int = 60) -> list[dict[str, str]]:
    seen = []
    body = driver.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    for _ in range(limit):
        now = _focused(driver)
        seen.append(now)
        assert now["outline"] != "none", now  # focus is visible
        assert now["width"] != "0px", now
        if want(now):
            return seen
        driver.switch_to.active_element.send_keys(Keys.TAB)
    raise AssertionError(f"never reached by Tab: {seen}")


def test_keyboard_alone_reaches_search_results_and_links(browser: Any, site: Site) -> None:
    browser.get(site.url + "/")
    seen = _tab_until(browser, lambda f: f["id"] == "top-q")
    assert seen[0]["href"] == "#main"  # the skip link comes first
    browser.switch_to.active_element.send_keys("flask", Keys.ENTER)
    WebDriverWait(browser, 10).until(ec.url_contains("/search?q=flask"))
    _tab_until(browser, lambda f: f["id"] == "f-sort")  # the filters are reachable
    seen = _tab_until(browser, lambda f: f["cls"] == "result" and "/plugins/" in f["href"])
    target = seen[-1]["href"]
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    WebDriverWait(browser, 10).until(ec.url_contains(target))
    _tab_until(browser, lambda f: f["id"] == "d-from" or f["href"].startswith("/publishers/"))


def test_hostile_content_is_inert_in_the_dom(browser: Any, site: Site) -> None:
    for path in (f"/plugins/{HOSTILE_ID}", "/search?q=hostile", "/namespaces/evil",
                 "/publishers/evil"):
        browser.get(site.url + path)
        audit(browser, site.url)
        for el in browser.find_elements(By.CSS_SELECTOR, "main a, main b, main i, main p"):
            if el.is_displayed():
                el.location_once_scrolled_into_view  # noqa: B018 (hover-like exposure)
        assert browser.execute_script("return window.__pwned") is None
        assert csp_violations(browser) == []
    text = browser.find_element(By.TAG_NAME, "main").text
    assert "\u202e" not in text
    answer = site.http.get(f"/plugins/{HOSTILE_ID}")
    assert "script-src 'self'" in answer.headers["content-security-policy"]


PAGES = [
    ("home", "/"), ("search", "/search?q=pytest"), ("search-typo", "/search?q=pytset"),
    ("plugin", "/plugins/acme.webby?from=1.0.0&to=2.0.0"),
    ("plugin-hostile", f"/plugins/{HOSTILE_ID}"), ("publisher", "/publishers/acme"),
    ("namespace", "/namespaces/acme"), ("not-found", "/plugins/nope.nothing"),
]


@pytest.mark.parametrize(("name", "path"), PAGES)
def test_screenshots_at_desktop_and_phone_widths(browser: Any, site: Site, screenshots: Path,
                                                 name: str, path: str) -> None:
    for label, (width, height) in (("desktop", DESKTOP), ("phone", PHONE)):
        browser.set_window_size(width, height)
        browser.get(site.url + path)
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 1, f"{name} scrolls sideways at {label} width by {overflow}px"
        shot = screenshots / f"{name}-{label}.png"
        assert browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 5_000
    browser.set_window_size(*DESKTOP)
