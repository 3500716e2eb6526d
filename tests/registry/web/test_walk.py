"""The whole community walk in Chromium: search, plugin page, sign up, a review refused
before the install and accepted after it, a flag, a moderator hiding it; screenshots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

from corral.registry._community.service import Community

from .conftest import DESKTOP, PHONE, Site
from .test_browser import audit, csp_violations

PASSWORD = "a long enough password"
REVIEW = "Solid *fetcher*, saved me hours <script>window.__pwned=1</script>"


def wait_url(driver: Any, part: str) -> None:
    WebDriverWait(driver, 15).until(ec.url_contains(part))


def fill(driver: Any, field_id: str, text: str) -> None:
    el = driver.find_element(By.ID, field_id)
    el.clear()
    el.send_keys(text)


def sign_up(driver: Any, site: Site, name: str) -> None:
    driver.get(site.url + "/account/signup")
    fill(driver, "a-name", name)
    fill(driver, "a-password", PASSWORD)
    fill(driver, "a-password2", PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "main form button[type=submit]").click()
    WebDriverWait(driver, 15).until(ec.url_to_be(site.url + "/account"))


def sign_out(driver: Any) -> None:
    driver.find_element(By.CSS_SELECTOR, ".top-nav button").click()
    WebDriverWait(driver, 15).until(
        lambda d: d.find_elements(By.LINK_TEXT, "Sign in"))


def shoot(driver: Any, folder: Path, name: str) -> None:
    for label, size in (("desktop", DESKTOP), ("phone", PHONE)):
        driver.set_window_size(*size)
        driver.refresh()
        overflow = driver.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 1, f"{name} scrolls sideways at {label} width by {overflow}px"
        assert driver.save_screenshot(str(folder / f"{name}-{label}.png"))
    driver.set_window_size(*DESKTOP)


def post_review(driver: Any, site: Site) -> None:
    driver.get(site.url + "/plugins/acme.webby#reviews")
    Select(driver.find_element(By.ID, "r-stars")).select_by_value("4")
    fill(driver, "r-body", REVIEW)
    driver.find_element(By.CSS_SELECTOR, "form[aria-label='Your review'] button").click()


def test_search_review_flag_moderate(browser: Any, site: Site, screenshots: Path) -> None:
    community = Community(site.registry)
    community.signup("moderator", PASSWORD)
    community.set_admin("moderator")
    browser.delete_all_cookies()

    # search -> plugin page
    browser.get(site.url + "/")
    browser.find_element(By.ID, "home-q").send_keys("webby", Keys.ENTER)
    wait_url(browser, "/search?q=webby")
    browser.find_element(By.CSS_SELECTOR, "a[href='/plugins/acme.webby']").click()
    wait_url(browser, "/plugins/acme.webby")
    browser.find_element(By.PARTIAL_LINK_TEXT, "Sign in").click()
    wait_url(browser, "/account/signin")
    shoot(browser, screenshots, "signin")
    browser.find_element(By.LINK_TEXT, "Create an account").click()
    wait_url(browser, "/account/signup")
    shoot(browser, screenshots, "signup")

    # sign up; a review before any install is refused
    sign_up(browser, site, "alice")
    post_review(browser, site)
    WebDriverWait(browser, 15).until(lambda d: "Not allowed" in d.find_element(By.TAG_NAME,
                                                                               "h1").text)
    assert "install" in browser.find_element(By.CSS_SELECTOR, "[role=alert]").text
    browser.get(site.url + "/plugins/acme.webby")
    assert "saved me hours" not in browser.page_source

    # a token from the account page; the CLI's download with it records the install
    browser.get(site.url + "/account")
    fill(browser, "t-desc", "laptop")
    browser.find_element(By.CSS_SELECTOR, "form[action='/account/tokens'] button").click()
    secret = WebDriverWait(browser, 15).until(
        lambda d: d.find_element(By.ID, "new-token")).text
    shoot(browser, screenshots, "account")  # a refresh re-posts nothing: 201 page is a POST
    download = site.http.get("/v1/plugins/acme.webby/download",
                             headers={"Authorization": f"Bearer {secret}"})
    assert download.headers["x-corral-install-recorded"] == "true"

    # now the review is accepted, shown sanitised
    post_review(browser, site)
    wait_url(browser, "saved=review")
    review = browser.find_element(By.CSS_SELECTOR, ".review")
    assert "Solid fetcher, saved me hours" in review.text
    assert review.find_elements(By.TAG_NAME, "em")  # Markdown rendered
    audit(browser, site.url)
    browser.find_element(By.CSS_SELECTOR, "#discussion summary").click()
    fill(browser, "q-title", "Does it follow redirects?")
    fill(browser, "q-body", "Asking for a **friend**.")
    browser.find_element(By.CSS_SELECTOR, "form[action$='/threads'] button").click()
    wait_url(browser, "/threads/")
    shoot(browser, screenshots, "thread")
    sign_out(browser)

    # another user flags the review
    sign_up(browser, site, "bob")
    browser.get(site.url + "/plugins/acme.webby#reviews")
    browser.find_element(By.CSS_SELECTOR, ".review details.flag summary").click()
    Select(browser.find_element(By.CSS_SELECTOR, ".review details.flag select")) \
        .select_by_visible_text("spam")
    browser.find_element(By.CSS_SELECTOR, ".review details.flag button").click()
    wait_url(browser, "saved=flag")
    assert "moderators will look" in browser.find_element(By.CSS_SELECTOR, ".notice").text
    shoot(browser, screenshots, "plugin-with-review")
    sign_out(browser)

    # the moderator hides it from the queue
    browser.get(site.url + "/account/signin")
    fill(browser, "a-name", "moderator")
    fill(browser, "a-password", PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "main form button").click()
    WebDriverWait(browser, 15).until(ec.url_to_be(site.url + "/account"))
    browser.find_element(By.LINK_TEXT, "Moderation").click()
    wait_url(browser, "/moderation")
    item = browser.find_element(By.CSS_SELECTOR, ".queue-item")
    assert "review" in item.text
    assert "spam" in item.text
    shoot(browser, screenshots, "moderation")
    item = browser.find_element(By.CSS_SELECTOR, ".queue-item")
    Select(item.find_element(By.TAG_NAME, "select")).select_by_visible_text("hide")
    item.find_element(By.CSS_SELECTOR, "input[name=reason]").send_keys("advertising")
    item.find_element(By.CSS_SELECTOR, "button").click()
    wait_url(browser, "saved=action")
    assert "advertising" in browser.find_element(By.ID, "log-h").find_element(
        By.XPATH, "..").text

    # the review is gone from the plugin page
    browser.get(site.url + "/plugins/acme.webby")
    assert "saved me hours" not in browser.page_source
    assert browser.find_elements(By.CSS_SELECTOR, ".review") == []
    assert csp_violations(browser) == []
