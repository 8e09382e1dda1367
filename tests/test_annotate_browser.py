"""The annotation page in a real browser: Debian's chromium, headless, driven by Selenium
through chromium-driver. Labels pairs by clicks and by keys and checks the stored labels; HTML
in a response shows as text and never runs; demo mode on a phone-sized screen.

Skipped when selenium, /usr/bin/chromium or /usr/bin/chromedriver is missing, unless
RLHF_JAX_REQUIRE_BROWSER=1 (CI sets it): then it fails. RLHF_JAX_ANNOTATE_SCREENSHOT=PATH saves
the demo-mode screenshot there (docs/annotate.png is made so).
"""

import os
import shutil
import tempfile
import threading
import time

import pytest

CHROMIUM = os.environ.get("RLHF_JAX_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("RLHF_JAX_CHROMEDRIVER", "/usr/bin/chromedriver")
REQUIRE = os.environ.get("RLHF_JAX_REQUIRE_BROWSER") == "1"


def _missing():
  try:
    import selenium  # noqa: F401
    import starlette  # noqa: F401
    import uvicorn  # noqa: F401
  except ImportError as e:
    return f"python package missing: {e.name}"
  for path in (CHROMIUM, CHROMEDRIVER):
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
      return f"{path} missing (apt-get install chromium chromium-driver)"
  return None


_WHY = _missing()
if _WHY:
  if REQUIRE:
    pytest.fail(f"RLHF_JAX_REQUIRE_BROWSER=1 but {_WHY}", pytrace=False)
  pytest.skip(_WHY, allow_module_level=True)

import uvicorn  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from rlhf_jax.annotate import loadgen  # noqa: E402
from rlhf_jax.annotate.app import create_app  # noqa: E402
from rlhf_jax.annotate.store import Store  # noqa: E402

XSS = '<script>window.__xss = 1</script><img src="x" onerror="window.__xss = 2"><b>bold?</b>'
CHAT_PROMPT = (
  "System: You are a helpful assistant.\n\nUser: How do I reverse a list in Python?\n\nAssistant:"
)
CHAT_A = " Use slicing:\n```python\nxs = [1, 2, 3]\nprint(xs[::-1])\n```\nIt returns a new list."
CHAT_B = " Call `xs.reverse()`; it reverses in place.\n" + "More detail. " * 300


class _Server:
  """uvicorn in a thread of this process (so the demo's reward model can be a callable)."""

  def __init__(self, app):
    self.port = loadgen.free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    self.server = uvicorn.Server(
      uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
    )
    self.thread = threading.Thread(target=self.server.run, daemon=True)

  def __enter__(self):
    self.thread.start()
    loadgen.wait_healthy(self.url, timeout_s=30)
    return self

  def __exit__(self, *exc):
    self.server.should_exit = True
    self.thread.join(30)


@pytest.fixture
def browser():
  profile = tempfile.mkdtemp(prefix="rlhf_jax_chromium_")
  opts = webdriver.ChromeOptions()
  opts.binary_location = CHROMIUM
  for flag in (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    f"--user-data-dir={profile}",
    "--window-size=1200,900",
  ):
    opts.add_argument(flag)
  driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
  driver.set_page_load_timeout(30)
  try:
    yield driver
  finally:
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _login(driver, url, token):
  driver.get(url + "/login")
  driver.find_element(By.ID, "token").send_keys(token)
  driver.find_element(By.ID, "btn-login").click()
  _wait_state(driver, "ready")


def _wait_state(driver, state, previous_pair=None):
  def ok(d):
    body = d.find_element(By.TAG_NAME, "body")
    return body.get_attribute("data-state") == state and (
      previous_pair is None or body.get_attribute("data-pair") != previous_pair
    )

  # The login redirect can replace the page between find_element and get_attribute (seen on
  # a loaded machine): a stale body is looked up again on the next poll.
  WebDriverWait(driver, 15, ignored_exceptions=(StaleElementReferenceException,)).until(ok)


def _current(driver):
  body = driver.find_element(By.TAG_NAME, "body")
  left = driver.find_element(By.ID, "left").get_attribute("textContent")
  return body.get_attribute("data-pair"), left


def _wait_labels(store, n):
  deadline = time.monotonic() + 10
  while len(store.labels()) < n and time.monotonic() < deadline:
    time.sleep(0.05)


def test_browser_labels_by_clicks_and_keys_and_html_shows_as_text(tmp_path, browser):
  store = Store(tmp_path / "db.sqlite")
  pairs = [
    {"id": "xss", "prompt": "Say <i>hi</i>", "response_a": XSS, "response_b": "plain B"},
    {"id": "chat", "prompt": CHAT_PROMPT, "response_a": CHAT_A, "response_b": CHAT_B},
  ] + [
    {"id": f"p{i}", "prompt": f"prompt {i}", "response_a": f"alpha {i}", "response_b": f"beta {i}"}
    for i in range(3)
  ]
  store.add_pairs(pairs)
  token = store.add_annotator("selenium")
  with _Server(create_app(store)) as srv:
    _login(browser, srv.url, token)
    expected = {}
    actions = ["click-left", "key-2", "click-tie", "key-1", "key-s"]
    for step, action in enumerate(actions):
      pair_id, left_text = _current(browser)
      if pair_id == "xss":
        # The payload is on screen as text; no element or script came from it.
        assert browser.execute_script("return window.__xss === undefined")
        for side in ("left", "right"):
          box = browser.find_element(By.ID, side)
          assert box.find_elements(By.CSS_SELECTOR, "script, img, b") == []
        shown = browser.find_element(By.ID, "left").text + browser.find_element(By.ID, "right").text
        assert "<script>window.__xss = 1</script>" in shown
      if pair_id == "chat":
        prompt = browser.find_element(By.ID, "prompt")
        roles = [e.text for e in prompt.find_elements(By.CSS_SELECTOR, ".turn .role")]
        assert roles == ["System", "User", "Assistant"]
        pres = browser.find_elements(By.CSS_SELECTOR, "#left pre, #right pre")
        assert len(pres) == 1 and "print(xs[::-1])" in pres[0].text
        long_box = browser.find_element(By.ID, "left" if "More detail" in left_text else "right")
        assert browser.execute_script(
          "return arguments[0].scrollHeight > arguments[0].clientHeight", long_box
        ), "a long response scrolls inside its box"
      marker_a = {"xss": "window.__xss = 1", "chat": "Use slicing"}.get(pair_id, "alpha")
      a_left = marker_a in left_text  # which side response_a is on
      kind, what = action.split("-")
      if kind == "click":
        browser.find_element(By.ID, f"btn-{what}").click()
      else:
        browser.find_element(By.TAG_NAME, "body").send_keys(what)
      choice = {"left": "left", "tie": "tie", "1": "left", "2": "right", "s": None}[what]
      if choice is not None:
        expected[pair_id] = (
          "tie" if choice == "tie" else ("a" if (choice == "left") == a_left else "b")
        )
      if step < len(actions) - 1:
        _wait_state(browser, "ready", previous_pair=pair_id)
    _wait_state(browser, "done")
    _wait_labels(store, len(expected))
    got = {r["pair_id"]: r["label"] for r in store.labels()}
    assert got == expected and len(got) == 4
    assert browser.find_element(By.ID, "progress").text == "4 of 5 pairs done"
    assert browser.execute_script("return window.__xss === undefined")


def test_browser_demo_mode_on_a_phone_screen(tmp_path, browser):
  store = Store(tmp_path / "db.sqlite")
  store.add_pairs(
    [
      {"id": "chat", "prompt": CHAT_PROMPT, "response_a": CHAT_A, "response_b": CHAT_B[:400]},
      {
        "id": "p1",
        "prompt": "User: Describe the sea.\n\nAssistant:",
        "response_a": " Blue and vast.",
        "response_b": " Wet.",
      },
    ]
  )
  token = store.add_annotator("demo")

  def rm(prompts, responses):  # a stand-in reward model: longer is better
    return [len(r) / 100.0 for r in responses]

  browser.set_window_size(390, 844)
  with _Server(create_app(store, rm_score=rm)) as srv:
    _login(browser, srv.url, token)
    assert browser.execute_script(
      "return document.documentElement.scrollWidth <= document.documentElement.clientWidth + 1"
    ), "no horizontal scrolling on a phone-sized screen"
    pair_id, left_text = _current(browser)
    browser.find_element(By.ID, "comment").send_keys("2 typed in the comment is not a key")
    browser.find_element(By.ID, "btn-right").click()
    _wait_state(browser, "demo")
    demo = browser.find_element(By.ID, "demo").text
    assert "Reward model: A" in demo and "agreement with the reward model so far: " in demo
    browser.set_window_size(1100, 1250)  # the screenshot at desktop width, whole page
    browser.execute_script("window.scrollTo(0, 0)")
    shot = os.environ.get("RLHF_JAX_ANNOTATE_SCREENSHOT")
    browser.save_screenshot(shot or str(tmp_path / "annotate.png"))
    (row,) = store.labels()
    assert row["comment"] == "2 typed in the comment is not a key"
    browser.find_element(By.TAG_NAME, "body").send_keys("\n")
    _wait_state(browser, "ready", previous_pair=pair_id)
    browser.find_element(By.TAG_NAME, "body").send_keys("t")
    _wait_state(browser, "demo")
    assert "so far: " in browser.find_element(By.ID, "demo-agreement").text
    assert len(store.labels()) == 2
