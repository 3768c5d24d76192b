"""The chat page at `/` in a real headless Chromium (Debian's `chromium` and `chromium-driver`, installed by
scripts/test.sh), driven by Selenium, against a real server started with --api-key: the key field, the
model picker filled from /v1/models, streamed text that grows, per-message tokens/s and TTFT, the Stop
button ending a long answer (and freeing its slot on the server), the conversation surviving a reload, and
Markdown rendered safely. Each test saves a screenshot under its tmp dir.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import start_llamacpp_server

selenium = pytest.importorskip("selenium", reason="selenium is not installed: pip install -e '.[test]'")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
API_KEY = "page-secret"
STATS = re.compile(r"(?:(stopped) · )?(~?)(\d+) tokens · ([\d.]+) tok/s · TTFT (\d+) ms")
WAIT_SECONDS = 60


@pytest.fixture(scope="module")
def page_server(tmp_path_factory):
    with start_llamacpp_server(tmp_path_factory, "web-page", ["--parallel", "2"], api_key=API_KEY) as running:
        yield running


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("Debian's chromium and chromium-driver are not installed (scripts/test.sh installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1100,900",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, condition, message: str, timeout: float = WAIT_SECONDS):
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: condition(d), message)


def open_page(driver, server) -> None:
    """Load the page and give it the API key (this tab's sessionStorage keeps it across reloads)."""
    driver.get(server.base_url + "/")
    if not driver.find_element(By.ID, "api-key").get_attribute("value"):
        wait_for(driver, lambda d: "API key" in d.find_element(By.ID, "status").text,
                 "the page did not say that the server wants an API key")
        driver.find_element(By.ID, "toggle-settings").click()
        key = driver.find_element(By.ID, "api-key")
        key.send_keys(API_KEY, Keys.TAB)  # the change event reloads the models
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"), "the model picker stayed empty")


def set_field(driver, element_id: str, value: str) -> None:
    settings = driver.find_element(By.ID, "settings")
    if not settings.is_displayed():
        driver.find_element(By.ID, "toggle-settings").click()
    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(value)


def last_answer(driver):
    return driver.find_elements(By.CSS_SELECTOR, "#messages .message")[-1]


def is_streaming(driver) -> bool:
    return "streaming" in last_answer(driver).get_attribute("class")


def send_message(driver, text: str) -> None:
    num_messages = len(driver.find_elements(By.CSS_SELECTOR, "#messages .message"))
    driver.find_element(By.ID, "input").send_keys(text, Keys.ENTER)
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#messages .message")) == num_messages + 2,
             "the message and its answer did not appear")


def running_requests(server) -> int:
    stats = httpx.get(f"{server.base_url}/health", timeout=10).json()["stats"]
    return sum(model["running"] for model in stats.values())


def test_pick_a_model_and_see_the_answer_stream_in_with_its_stats(page_server, browser, tmp_path):
    open_page(browser, page_server)
    picker = browser.find_element(By.ID, "model")
    assert [o.text for o in picker.find_elements(By.TAG_NAME, "option")] == [m["id"] for m in page_server.models]
    assert picker.get_attribute("value") == page_server.model
    set_field(browser, "temperature", "0")
    set_field(browser, "max-tokens", "80")
    send_message(browser, "Write a short poem about the sea.")
    lengths = []
    deadline = time.monotonic() + WAIT_SECONDS
    while is_streaming(browser) and time.monotonic() < deadline:
        lengths.append(len(last_answer(browser).find_element(By.CLASS_NAME, "content").text))
        time.sleep(0.02)
    assert not is_streaming(browser), "the answer did not finish"
    # rendered text, so not strictly monotonic: closing a **bold** hides its asterisks
    assert len(set(lengths)) >= 3 and lengths[0] < lengths[-1], f"the text did not grow over time: {lengths}"
    answer = last_answer(browser)
    text = answer.find_element(By.CLASS_NAME, "content").text
    assert text and len(text) >= lengths[-1] - 10
    stats = STATS.fullmatch(answer.find_element(By.CLASS_NAME, "stats").text.split(" · finish")[0])
    assert stats, answer.find_element(By.CLASS_NAME, "stats").text
    stopped, approximate, num_tokens, tokens_per_second, ttft_ms = stats.groups()
    assert not stopped and not approximate  # the usage chunk gave the exact count
    assert 1 < int(num_tokens) <= 80 and float(tokens_per_second) > 0 and int(ttft_ms) >= 0
    browser.save_screenshot(str(tmp_path / "chat.png"))

    browser.refresh()  # the conversation lives in localStorage
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#messages .message")) == 2,
             "the conversation did not survive a reload")
    user, kept = browser.find_elements(By.CSS_SELECTOR, "#messages .message")
    assert user.find_element(By.CLASS_NAME, "content").text == "Write a short poem about the sea."
    assert kept.find_element(By.CLASS_NAME, "content").text == text
    assert STATS.match(kept.find_element(By.CLASS_NAME, "stats").text)


def test_stop_ends_a_long_answer_and_frees_its_slot(page_server, browser, tmp_path):
    open_page(browser, page_server)
    browser.find_element(By.ID, "new-chat").click()
    set_field(browser, "temperature", "0")
    set_field(browser, "max-tokens", "3000")
    send_message(browser, "Count from 1 to 1000, one number per line.")
    wait_for(browser, lambda d: len(last_answer(d).find_element(By.CLASS_NAME, "content").text) > 10,
             "no streamed text arrived")
    assert is_streaming(browser), "the answer ended before it could be stopped"
    browser.find_element(By.ID, "stop").click()
    wait_for(browser, lambda d: not is_streaming(d), "Stop did not end the answer", timeout=10)
    assert browser.find_element(By.ID, "send").is_displayed()
    assert not browser.find_element(By.ID, "stop").is_displayed()
    stopped_text = last_answer(browser).find_element(By.CLASS_NAME, "content").text
    stats = STATS.fullmatch(last_answer(browser).find_element(By.CLASS_NAME, "stats").text)
    assert stats and stats.group(1) == "stopped" and stats.group(2) == "~", stats
    time.sleep(1)
    assert last_answer(browser).find_element(By.CLASS_NAME, "content").text == stopped_text  # nothing more came
    deadline = time.monotonic() + 10
    while running_requests(page_server) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert running_requests(page_server) == 0, "the stopped request still runs on the server"
    browser.save_screenshot(str(tmp_path / "stopped.png"))


MARKDOWN = ("# Heading\n\nSome **bold**, *italic* and `inline code`.\n\n```python\nprint('<b>not bold</b>')\n"
            "```\n\n- one\n- two\n\n<img src=x onerror=\"document.title='pwned'\"> [link](https://example.com)")


def test_markdown_and_code_blocks_render_and_html_stays_text(page_server, browser, tmp_path):
    open_page(browser, page_server)
    conversation = {"messages": [{"role": "user", "content": "<b>show</b> markdown"},
                                 {"role": "assistant", "content": MARKDOWN, "model": page_server.model}],
                    "settings": {"model": page_server.model, "system": "Be brief.", "temperature": "0.3"}}
    browser.execute_script("localStorage.setItem('quantserve.chat.v1', arguments[0])", json.dumps(conversation))
    browser.refresh()
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".message.assistant h1"), "no Markdown heading")
    content = last_answer(browser).find_element(By.CLASS_NAME, "content")
    assert content.find_element(By.TAG_NAME, "h1").text == "Heading"
    assert content.find_element(By.TAG_NAME, "strong").text == "bold"
    assert content.find_element(By.TAG_NAME, "em").text == "italic"
    assert content.find_element(By.CSS_SELECTOR, "p code").text == "inline code"
    block = content.find_element(By.CSS_SELECTOR, "pre[data-lang=python] code")
    assert block.text == "print('<b>not bold</b>')"
    assert [li.text for li in content.find_elements(By.TAG_NAME, "li")] == ["one", "two"]
    assert content.find_element(By.TAG_NAME, "a").get_attribute("href") == "https://example.com/"
    assert not browser.find_elements(By.CSS_SELECTOR, "#messages img, #messages b")  # markup stays text
    assert browser.title == "quantserve chat"
    user = browser.find_element(By.CSS_SELECTOR, ".message.user .content")
    assert user.text == "<b>show</b> markdown"
    assert browser.find_element(By.ID, "system").get_attribute("value") == "Be brief."
    assert browser.find_element(By.ID, "temperature").get_attribute("value") == "0.3"
    browser.save_screenshot(str(tmp_path / "markdown.png"))


def test_a_server_error_is_shown_in_the_conversation(page_server, browser):
    open_page(browser, page_server)
    browser.find_element(By.ID, "new-chat").click()
    set_field(browser, "temperature", "5")  # out of range: the server's 400 names the field
    send_message(browser, "Hello")
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#messages .message.error"), "no error shown")
    error = browser.find_element(By.CSS_SELECTOR, "#messages .message.error").text
    assert "temperature" in error and "HTTP 400" in error
    set_field(browser, "temperature", "0.7")


def test_the_page_works_without_network_access_to_anything_but_the_server(page_server, browser):
    """Every request the page made went to the server itself (no CDN, no fonts, no analytics)."""
    open_page(browser, page_server)
    urls = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert urls and all(url.startswith(page_server.base_url + "/") for url in urls), urls
