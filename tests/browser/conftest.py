"""The dashboard in a real Chromium (Debian's ``chromium``, driven by Playwright; ``scripts/test`` installs it),
against the stack of processes that the end-to-end suites use.

Every page a test opens is watched: a request to any origin but the gateway's is refused and recorded (the
dashboard must work offline), and script errors and Content-Security-Policy violations are collected; each test
ends by asserting there were none. Screenshots go to ``test-artifacts/dashboard/`` (or $TUNEFLEET_TEST_ARTIFACTS).
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.cloudstack import RunningStack

REPO = Path(__file__).parents[2]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


def chromium_path() -> str:
    found = os.environ.get("TUNEFLEET_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("no chromium on PATH: scripts/test installs Debian's (apt-get install chromium), or set "
                    "TUNEFLEET_CHROMIUM to a Chromium binary")
    return found


@pytest.fixture(scope="session")
def artifacts() -> Path:
    folder = Path(os.environ.get("TUNEFLEET_TEST_ARTIFACTS") or REPO / "test-artifacts") / "dashboard"
    shutil.rmtree(folder, ignore_errors=True)  # this run's pictures only
    folder.mkdir(parents=True)
    return folder


@pytest.fixture(scope="module")
def browser():
    """Chromium for one test file. Not for the session: while Playwright's sync API is running, asyncio sees a
    running loop in this thread, and the async tests of the next file on this worker could not start theirs."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # --no-sandbox: the suite may run as root (CI), where Chromium's sandbox refuses to start
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        yield browser
        browser.close()


@dataclass
class Watch:
    """What a page did that it must not: requests elsewhere, script errors, CSP violations."""

    origin: str
    foreign: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert not self.foreign, f"the dashboard asked for things outside the gateway: {self.foreign}"
        assert not self.errors, f"the page reported errors: {self.errors}"


def open_dashboard(browser, stack: RunningStack, viewport=DESKTOP):
    """A new browser context (its own sessionStorage) and page on the dashboard, watched."""
    context = browser.new_context(viewport=viewport, base_url=stack.url)
    page = context.new_page()
    watch = Watch(stack.url)

    def route(r):
        if r.request.url.startswith(stack.url):
            return r.continue_()
        watch.foreign.append(r.request.url)
        return r.abort()

    def console(message):
        text = message.text
        # 4xx answers the page handles itself (a wrong key, a refused field) show in the console as failed loads
        if message.type == "error" and "Failed to load resource" not in text:
            watch.errors.append(text)
        if "Content Security Policy" in text:
            watch.errors.append(text)

    page.route("**/*", route)
    page.on("console", console)
    page.on("pageerror", lambda exc: watch.errors.append(f"script error: {exc}"))
    page.goto("/ui/")
    return context, page, watch


def sign_in(page, key: str) -> None:
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("navigation", name="Main").wait_for()


@pytest.fixture(scope="module")
def new_user(stack: RunningStack):
    """Make a user of their own (so other suites' jobs on this stack are not theirs): their API key."""
    def make(prefix: str) -> str:
        return stack.cli("keys", "create", "--user", f"{prefix}-{uuid.uuid4().hex[:8]}").strip()
    return make


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.call_report = report
    return report


@pytest.fixture(autouse=True)
def screenshot_on_failure(request, artifacts):
    """A failed test leaves a screenshot of every page it had open, as the browser showed it then."""
    yield
    report = getattr(request.node, "call_report", None)
    if report is None or not report.failed:
        return
    for name in request.fixturenames:
        value = request.getfixturevalue(name) if name.endswith("_session") else None
        if isinstance(value, tuple) and len(value) == 3:
            value[1].screenshot(path=str(artifacts / f"FAILED-{request.node.name}.png"), full_page=True)


def assert_accessible(page, what: str) -> None:
    """axe-core's WCAG 2 A and AA rules (contrast, labels, names, roles, landmarks) find nothing on the page."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page, options={"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21aa"]}})
    problems = [f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
                for v in results.response["violations"]]
    assert not problems, f"{what}: {problems}"
