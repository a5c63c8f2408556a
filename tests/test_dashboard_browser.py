"""The dashboard in real headless Chromium, through the front at opus.localhost, on the
session's Opus: sign in, see a pushed app appear, scale it, watch its logs live, roll
it back. Screenshots of the main pages go to tests/artifacts/dashboard/."""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    CHECKOUT,
    Opus,
    SshKey,
    git,
    make_django_project,
    push_main,
    require_tool,
    set_greeting,
    wsgi_daemons,
)

APP = "dashapp"
PASSWORD = "dashboard password 1"
SHOTS = CHECKOUT / "tests" / "artifacts" / "dashboard"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require_tool(CHROMIUM)
    require_tool(CHROMEDRIVER)
    os.environ["SE_OFFLINE"] = "true"     # Selenium must not look for drivers online
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-default-apps", "--no-first-run",
                 "--no-proxy-server", "--host-resolver-rules=MAP *.localhost 127.0.0.1",
                 "--window-size=1280,1200"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options,
                              service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(check: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = check()
        except Exception:   # the element is not there yet (or the page is reloading)
            found = None
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def shot(driver: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def css(driver: Any, selector: str) -> Any:
    from selenium.webdriver.common.by import By
    return driver.find_element(By.CSS_SELECTOR, selector)


def all_css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By
    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def messages(driver: Any) -> str:
    return " ".join(m.text for m in all_css(driver, ".messages li"))


def web_port(opus: Opus) -> int:
    listed = json.loads(opus.cli("ps", APP, "--json").stdout)
    return int(listed[0]["name"].rsplit("-p", 1)[1])


def test_the_dashboard_in_a_browser(opus: Opus, admin_key: SshKey, browser: Any,
                                    tmp_path: Path) -> None:
    base = f"http://{opus.app_host('opus')}:{opus.http_port}"
    opus.cli("users:passwd", "admin", input=PASSWORD + "\n")

    # Signing in: any page sends you to the sign-in form first.
    browser.get(base + "/")
    assert "/signin" in browser.current_url
    shot(browser, "1-signin")
    css(browser, "input[name=user]").send_keys("admin")
    css(browser, "input[name=password]").send_keys(PASSWORD)
    css(browser, "form.signin button").click()
    wait_for(lambda: css(browser, "h1").text == "Apps", "the app list")

    # A pushed app appears.
    project = make_django_project(tmp_path / "project", greeting="Dashboard v1")
    git(project, "remote", "add", "opus", f"ssh://git@127.0.0.1:{opus.ssh_port}/{APP}.git")
    push_main(project, opus, admin_key)

    def running_row() -> Any:
        # The push returns once traffic has switched; supervisor counts the instance as
        # running a moment later (startsecs).
        browser.refresh()
        row = css(browser, f"tr[data-app={APP}]")
        return row if "running" in row.text else None
    row = wait_for(running_row, "the pushed app's row, running")
    assert "v1" in row.text and "web=1" in row.text
    shot(browser, "2-apps")

    # Scale web to 3: the page shows 3 processes, and so does the OS.
    row.find_element("link text", APP).click()
    scale = wait_for(lambda: css(browser, "input[name=scale-web]"), "the scale form")
    scale.clear()
    scale.send_keys("3")
    css(browser, "form.scale button").click()
    wait_for(lambda: "Scaled dashapp: web=3" in messages(browser), "the scale to finish", 90)
    assert css(browser, "tr[data-type=web] .web-processes").text == "3"
    assert wsgi_daemons(web_port(opus)) == 3
    assert opus.get(opus.app_host(APP))[0] == 200

    # Live logs: a request and a line the app prints arrive without a reload; the
    # printed line's markup stays text.
    browser.get(f"{base}/apps/{APP}/logs")
    wait_for(lambda: css(browser, "#log-state").text == "live", "the log stream to connect")
    marker = secrets.token_hex(6)
    assert opus.get(opus.app_host(APP), f"/?live={marker}")[0] == 200
    wait_for(lambda: marker in css(browser, "#log").text, "the request's log line", 20)
    hostile = f'<img src=x onerror="window.__xss=1"> printed {marker}'
    with (opus.home / "logs" / APP / "web.log").open("a") as out:
        out.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S.000000Z', time.gmtime())} {hostile}\n")
    wait_for(lambda: hostile in css(browser, "#log").text, "the printed line", 20)
    assert browser.execute_script("return window.__xss") is None
    assert not all_css(browser, "#log img")
    shot(browser, "4-logs")

    # Roll back to v1 from the releases table: v1's content is served again.
    set_greeting(project, "Dashboard v2")
    push_main(project, opus, admin_key)
    assert opus.get(opus.app_host(APP))[2].startswith("Dashboard v2")
    browser.get(f"{base}/apps/{APP}")
    css(browser, "tr[data-version='1'] button.rollback").click()
    wait_for(lambda: "Rolled dashapp back to v1" in messages(browser), "the rollback", 90)
    assert opus.get(opus.app_host(APP))[2].startswith("Dashboard v1")
    live = css(browser, "tr[data-version='3']")
    assert "live" in live.text and "Rollback to v1" in live.text

    # A config value with markup is masked, then shown as text when revealed.
    value = '<img src=x onerror="window.__xss=2">'
    opus.cli("config:set", APP, f"HTML_SNIPPET={value}")
    browser.get(f"{base}/apps/{APP}")
    cell = css(browser, "tr[data-key=HTML_SNIPPET]")
    assert value not in cell.text
    cell.find_element("css selector", "summary").click()
    assert css(browser, "tr[data-key=HTML_SNIPPET] pre.value").text == value
    assert browser.execute_script("return window.__xss") is None

    # The charts: requests from the front's log at once, memory once sampled.
    def charted() -> bool:
        browser.refresh()
        figures = {f.get_attribute("data-title"): f for f in all_css(browser, "figure.chart")}
        requests = figures["Requests per minute"].find_element("css selector", "polyline")
        heights = [float(p.split(",")[1]) for p in requests.get_attribute("points").split()]
        memory = figures["Memory"].find_element("css selector", ".latest").text
        return min(heights) < 120 and memory.endswith("MiB")
    wait_for(charted, "requests and memory on the charts", 45)
    browser.set_window_size(1280, 2800)      # the whole page in one picture
    shot(browser, "3-app")
    browser.set_window_size(1280, 1200)

    # Keys and users: the admin's key is listed, and every user.
    browser.get(f"{base}/keys")
    assert "SHA256:" in css(browser, "table.keys").text
    shot(browser, "5-keys")
    browser.get(f"{base}/users")
    assert css(browser, "tr[data-user=admin]")
    shot(browser, "6-users")

    # New project: the builder's form, reached from the app list.
    browser.get(base + "/")
    css(browser, "a.new-project").click()
    wait_for(lambda: css(browser, "h1").text == "New project", "the New project page")
    assert len(all_css(browser, "input[name=with]")) == 5
    shot(browser, "7-new-project")
