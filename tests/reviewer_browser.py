"""A reviewer in the Argilla 2.8 web UI, driven through headless Chromium (Debian's ``chromium`` + ``chromium-driver``,
installed by scripts/install_test_deps.sh) with selenium. Used by tests/test_review_browser.py.

Every click and keystroke goes through :class:`Reviewer`, which counts them (``actions``), so a test can report how
much work a page asks of a person. Waits are explicit (WebDriverWait on a condition), never fixed sleeps.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

CHROMIUM = os.environ.get("EVOLKIT_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("EVOLKIT_CHROMEDRIVER", "/usr/bin/chromedriver")
#: Flags that work on a small shared Linux box without a display, sandbox or network.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1440,900", "--force-device-scale-factor=1"]
WAIT = 90.0  # seconds: a 2-core machine shared with other work renders slowly

# JavaScript: is the element fully visible without scrolling (inside the window and every scrolling ancestor)?
_VISIBLE_JS = """
const el = arguments[0];
const r = el.getBoundingClientRect();
if (r.bottom > window.innerHeight || r.top < 0) return false;
let p = el.parentElement;
while (p) {
  const s = getComputedStyle(p);
  if (/(auto|scroll)/.test(s.overflowY) && p.scrollHeight > p.clientHeight) {
    const pr = p.getBoundingClientRect();
    if (r.bottom > pr.bottom + 1 || r.top < pr.top - 1) return false;
  }
  p = p.parentElement;
}
return true;
"""


def browser_missing() -> str | None:
    """Why the browser cannot run here (None when it can)."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (Path(path).exists() or shutil.which(path)):
            return f"{path} not found: run `bash scripts/install_test_deps.sh` (Debian chromium + chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


class Reviewer:
    """One person in one browser profile: log in, open a dataset page, read it, answer, and count the actions."""

    def __init__(self, base_url: str, username: str, password: str, shots: Path):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.base_url = base_url.rstrip("/")
        self.username, self._password = username, password
        self.shots = shots
        self.profile = tempfile.mkdtemp(prefix="evolkit-chromium-")
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for f in FLAGS + [f"--user-data-dir={self.profile}"]:
            opts.add_argument(f)
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
        self.actions: Counter[str] = Counter()

    # ------------------------------------------------------------------------------------------------ basics
    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Reviewer":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        try:
            if exc_type is not None:  # what the page showed when the test failed, kept with the screenshots
                self.screenshot(f"failed-{self.username}-{int(time.time())}")
        except Exception:
            pass
        finally:
            self.close()

    def wait(self, condition: Any, timeout: float = WAIT, message: str = "") -> Any:
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait

        # the page re-renders as records change: an element read mid-change is read again at the next poll
        return WebDriverWait(self.driver, timeout, poll_frequency=0.2,
                             ignored_exceptions=(StaleElementReferenceException,)).until(condition, message)

    def css(self, selector: str, root: Any = None) -> list[Any]:
        from selenium.webdriver.common.by import By

        return (root or self.driver).find_elements(By.CSS_SELECTOR, selector)

    def visible(self, selector: str) -> Any:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as EC

        return self.wait(EC.visibility_of_element_located((By.CSS_SELECTOR, selector)), message=selector)

    def click(self, el: Any) -> None:
        self.actions["clicks"] += 1
        el.click()

    def type(self, el: Any, text: str) -> None:
        self.actions["keys"] += len(text)
        el.send_keys(text)

    def screenshot(self, name: str) -> Path:
        self.shots.mkdir(parents=True, exist_ok=True)
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def in_view(self, el: Any) -> bool:
        """Whether ``el`` can be read without scrolling."""
        return bool(self.driver.execute_script(_VISIBLE_JS, el))

    # ------------------------------------------------------------------------------------------------ pages
    def log_in(self) -> None:
        """The sign-in form, as a person fills it (not counted: it is not per record)."""
        self.driver.get(f"{self.base_url}/sign-in")
        self.visible("input[type=text]").send_keys(self.username)
        self.css("input[type=password]")[0].send_keys(self._password)
        self.css("button[type=submit]")[0].click()
        self.wait(lambda d: "/sign-in" not in d.current_url, message="still on the sign-in page")

    def open_from_home(self, dataset: str) -> None:
        """The home page lists the datasets of the reviewer's workspaces: click one by its name."""
        from selenium.webdriver.common.by import By

        self.driver.get(self.base_url)
        link = self.wait(lambda d: next(iter(d.find_elements(By.XPATH, f"//*[normalize-space(text())='{dataset}']")),
                                        None), message=f"dataset {dataset!r} on the home page")
        self.click(link)
        self.wait(lambda d: "/dataset/" in d.current_url, message=f"dataset {dataset!r} page")
        self.visible(".text_field_component .markdown-render")
        self.actions.clear()  # finding the dataset is not work on a record

    def open(self, url: str) -> None:
        """A dataset's annotation page; returns once a record is shown."""
        self.driver.get(url)
        self.visible(".text_field_component .markdown-render")

    def fields(self) -> dict[str, Any]:
        """{field title: its rendered element} of the record on screen."""
        out = {}
        for comp in self.css(".text_field_component"):
            title = self.css(".text_field_component__title-content", comp)
            body = self.css(".markdown-render", comp)
            if title and body:
                out[title[0].text.strip()] = body[0]
        return out

    def field_text(self, title: str) -> str:
        return self.fields()[title].text

    def record_key(self) -> str:
        """The text of the record on screen and its place in the queue ("1 of 2"), to notice when the page moves to
        another record (two samples of a problem can have the same text)."""
        place = [el.text for el in self.css(".pagination__info")]
        return "\n".join(place + [el.text for el in self.fields().values()])

    def guidelines(self) -> str:
        """Open the guidelines panel (if closed) and return its text (all of it: part may be scrolled out of view)."""
        self._toggle_guidelines(expanded=True)
        panel = self.wait(lambda d: next((p for p in self.css(".panel") if "--collapsed" not in
                                          (p.get_attribute("class") or "") and p.is_displayed()
                                          and p.text.strip()), None), message="guidelines text")
        return panel.get_attribute("textContent")

    def close_guidelines(self) -> None:
        self._toggle_guidelines(expanded=False)

    def _toggle_guidelines(self, expanded: bool) -> None:
        """Click the guidelines header until the panel is open (``expanded``) or closed. A click that lands while the
        panel is still animating is ignored by the page, so a person (and this) clicks again."""
        from selenium.common.exceptions import TimeoutException

        want = "true" if expanded else "false"
        for attempt in range(4):
            header = self.visible(".panel__header")
            if (header.get_attribute("aria-expanded") == "true") == expanded:
                return
            header.click()
            try:
                self.wait(lambda d: (self.visible(".panel__header").get_attribute("aria-expanded") == "true")
                          == expanded, timeout=5, message=f"guidelines aria-expanded={want}")
                return
            except TimeoutException:
                if attempt == 3:
                    raise

    # ------------------------------------------------------------------------------------------------ answering
    def ranking(self) -> dict[str, int]:
        """The ranking currently in the form: {version id: slot number}."""
        out = {}
        for slot in self.css(".draggable__slot"):
            rank = int(self.css(".draggable__slot-box--ranking", slot)[0].text.strip())
            for card in self.css("[title^='Version ']", slot):
                out[card.get_attribute("title").split()[-1]] = rank
        return out

    def rank(self, order: list[str]) -> None:
        """Put the versions in ``order`` (best first) with the keyboard: focus a version's card, type its rank."""
        for n, v in enumerate(order, 1):
            card = self.visible(f"div[tabindex='0'][title='Version {v}']")
            self.click(card)
            self.type(card, str(n))
            self.wait(lambda d, v=v, n=n: self.ranking().get(v) == n, message=f"Version {v} in slot {n}")
            # The component reads multi-digit ranks: keys typed within 300 ms add up ("1" then "2" is 12). Wait
            # until it has closed this entry (its key buffer is empty again) before the next version's key.
            self.wait(lambda d: d.execute_script(
                "const el = document.querySelector('.draggable'); return !el || !el.__vue__ || !el.__vue__.keyCode;"),
                message="ranking keyboard entry closed")

    def _options(self) -> list[tuple[str, Any]]:
        return [(self.css(".label-text__text", el)[0].text.strip(), el) for el in self.css("label.label-text")
                if self.css(".label-text__text", el)]

    def choose(self, option: str) -> None:
        """Click the option whose text is ``option`` (a LabelQuestion), unless it is already selected."""
        label = self.wait(lambda d: next((el for text, el in self._options() if text == option), None),
                          message=f"option {option!r}")
        if "label-active" not in (label.get_attribute("class") or ""):
            self.click(label)
        self.wait(lambda d: "label-active" in (label.get_attribute("class") or ""), message=f"{option!r} selected")

    def selected(self) -> list[str]:
        """The texts of the selected options."""
        return [text for text, el in self._options() if "label-active" in (el.get_attribute("class") or "")]

    def _act(self, button: str, before: str, expect_next: bool) -> None:
        btn = self.visible(f"button.button--{button}")
        self.wait(lambda d: btn.is_enabled(), message=f"{button} button enabled")
        self.click(btn)
        if expect_next:  # the page moves on to the next pending record
            self.wait(lambda d: self.css(".text_field_component .markdown-render") and self.record_key() != before,
                      message=f"next record after {button}")
        else:  # the last pending record: the form empties
            self.wait(lambda d: not self.css(".text_field_component .markdown-render"), message=f"{button}: done")

    def submit(self, expect_next: bool = True) -> None:
        self._act("submit", self.record_key(), expect_next)

    def discard(self, expect_next: bool = True) -> None:
        self._act("discard", self.record_key(), expect_next)
