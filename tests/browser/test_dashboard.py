"""The dashboard through a real Chromium only: sign in, upload a data set (a bad line named, then fixed), a
configuration from a preset (a refused field shown on the field as it is typed, the estimate beside it), the
preflight, a deploy on ``local`` whose loss chart gains points live, predictions and ``completed``; the model
served and answering in the playground; a second job stopped from its page and retried; and a second user who
sees none of it. Each page is saved as a screenshot, at 1280 px and on a phone."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.cloudstack import RunningStack
from tests.e2e.conftest import wait_until

from .conftest import DESKTOP, PHONE, assert_accessible, open_dashboard, sign_in

pytestmark = pytest.mark.e2e

STEPS = 200  # enough that the page sees the run under way, not only its end


def shoot(page, artifacts: Path, name: str, *, full_page: bool = True) -> None:
    page.screenshot(path=str(artifacts / f"{name}.png"), full_page=full_page)


@pytest.fixture(scope="module")
def data_files(tmp_path_factory) -> tuple[Path, Path]:
    """A good JSONL data set, and the same with line 3 broken."""
    from trainer.tiny_model import write_sample_dataset

    folder = tmp_path_factory.mktemp("browser-data")
    good = Path(write_sample_dataset(str(folder / "train.jsonl"), rows=32, fmt="instruction"))
    lines = good.read_text().splitlines()
    lines[2] = '{"instruction": "a line cut short'
    bad = folder / "broken.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    return good, bad


@pytest.fixture(scope="module")
def alice_session(browser, stack: RunningStack, new_user, artifacts):
    key = new_user("browser-alice")
    context, page, watch = open_dashboard(browser, stack)
    page.on("dialog", lambda dialog: dialog.accept())  # the confirm() before a stop or a delete
    yield key, page, watch
    context.close()


def drop_file(page, selector: str, path: Path) -> None:
    """Drag a file onto the drop zone, as a user drags one from their desktop. The zone is waited for
    first: a click on a link changes the route, and the page it names renders a moment later."""
    zone = page.locator(selector)
    zone.wait_for()
    zone.evaluate("""(zone, [name, text]) => {
        const transfer = new DataTransfer();
        transfer.items.add(new File([text], name, { type: "application/jsonl" }));
        for (const type of ["dragenter", "dragover", "drop"]) {
          zone.dispatchEvent(new DragEvent(type, { dataTransfer: transfer, bubbles: true, cancelable: true }));
        }
    }""", [path.name, path.read_text()])


def fill_field(page, path: str, value) -> None:
    field = page.locator(f'[data-field="{path}"]')
    control = field.locator("input, select").first
    if control.evaluate("e => e.tagName") == "SELECT":
        control.select_option(str(value))
    else:
        control.fill(str(value))
        control.dispatch_event("change")


def test_sign_in_refuses_a_wrong_key_and_keeps_the_key_in_the_tab(alice_session, artifacts):
    key, page, watch = alice_session
    page.get_by_label("API key").fill("tf_not-a-real-key")
    page.get_by_role("button", name="Sign in").click()
    alert = page.get_by_role("alert")
    alert.wait_for()
    assert "unknown or revoked" in alert.inner_text()
    shoot(page, artifacts, "01-sign-in-refused")
    assert_accessible(page, "sign-in")
    sign_in(page, key)
    assert page.evaluate("sessionStorage.getItem('tunefleet.key')") == key
    assert page.evaluate("localStorage.length") == 0 and "tunefleet" not in page.evaluate("document.cookie")
    watch.assert_clean()


def test_a_bad_line_is_named_then_the_fixed_file_is_described(alice_session, data_files, artifacts):
    _, page, watch = alice_session
    good, bad = data_files
    page.get_by_role("link", name="Data sets").click()
    drop_file(page, ".dropzone", bad)
    problems = page.get_by_test_id("upload-errors")
    problems.wait_for()
    row = problems.locator("tbody tr").first
    assert row.locator("td").nth(0).inner_text() == "3"
    assert "not valid JSON" in row.locator("td").nth(1).inner_text()
    shoot(page, artifacts, "02-data-set-bad-line")

    page.set_input_files("#dataset-file", str(good))
    detail = page.get_by_role("region", name=f"Data set {good.name}")
    detail.wait_for()
    assert problems.count() == 0
    facts = detail.locator("dl.facts").inner_text()
    assert "instruction" in facts and "32" in facts
    detail.locator(".preview li").first.wait_for()
    assert detail.locator(".preview li").count() == 5
    first = json.loads(good.read_text().splitlines()[0])
    assert first["instruction"][:20] in detail.locator(".preview li").first.inner_text()
    assert detail.locator(".histogram rect").count() > 0
    shoot(page, artifacts, "03-data-set")
    assert_accessible(page, "data sets")
    watch.assert_clean()


def test_a_preset_becomes_a_checked_configuration_with_its_estimate(alice_session, tiny_model_dir, data_files,
                                                                    artifacts):
    _, page, watch = alice_session
    page.get_by_role("link", name="Configurations").click()
    page.get_by_role("button", name=re.compile("Small model")).click()
    page.locator('[data-field="model.base_model"]').wait_for()
    assert page.locator('[data-field="training.lora.r"] input').input_value() == "8"  # the specification's preset

    fill_field(page, "name", "browser-run")
    fill_field(page, "model.base_model", tiny_model_dir)
    fill_field(page, "model.max_seq_length", 64)
    page.locator("fieldset", has_text="Data").get_by_role("button", name=re.compile(data_files[0].name)).click()
    for path, value in {"training.max_steps": STEPS, "training.batch_size": 4, "training.learning_rate": 0.005,
                        "training.eval_steps": 50, "predictions.sample_count": 2, "predictions.frequency": "steps",
                        "predictions.step_interval": 50, "predictions.max_new_tokens": 6}.items():
        fill_field(page, path, value)

    # a refused value shows on its own field as it is typed, and goes when it is fixed
    fill_field(page, "training.lora.r", 0)
    problem = page.locator('[data-field="training.lora.r"] .problem')
    problem.wait_for()
    assert "greater than or equal to 1" in problem.inner_text()
    shoot(page, artifacts, "04-configuration-refused-field")
    assert_accessible(page, "configuration editor")
    fill_field(page, "training.lora.r", 8)
    problem.wait_for(state="detached")

    estimate = page.locator(".estimate")
    estimate.locator("tbody tr").first.wait_for()
    assert "MiB" in estimate.inner_text() and "PFLOP" in estimate.inner_text()
    page.get_by_role("button", name="Save configuration").click()
    page.wait_for_url(re.compile(r"#/configs/[0-9a-f-]{36}$"))
    page.get_by_role("row", name=re.compile("browser-run")).wait_for()
    shoot(page, artifacts, "05-configuration")
    watch.assert_clean()


def test_deploy_on_local_and_watch_it_live_to_completed(alice_session, artifacts):
    _, page, watch = alice_session
    page.get_by_role("button", name="Deploy…").click()
    dialog = page.get_by_role("dialog", name="Deploy")
    dialog.get_by_label("Provider").select_option("local")
    dialog.get_by_label("Budget (USD)").fill("5")
    dialog.get_by_role("button", name=re.compile("Run the preflight")).click()
    verdict = dialog.get_by_test_id("preflight")
    verdict.wait_for(timeout=180_000)
    assert verdict.inner_text().startswith("Preflight passed"), verdict.inner_text()
    shoot(page, artifacts, "06-deploy-dialog", full_page=False)
    assert_accessible(page, "deploy dialog")
    dialog.get_by_role("button", name="Deploy", exact=True).click()
    page.wait_for_url(re.compile(r"#/jobs/[0-9a-f-]{36}$"), timeout=30_000)

    # The loss chart gains points while the job runs: read from the stream, not from a reload.
    loss = page.locator('figure.chart[aria-label="Loss"]')
    status = page.locator(".progress-block .badge")

    def points() -> int:
        plot = loss.locator(".plot")
        return int(plot.get_attribute("data-points") or 0) if plot.count() else 0

    first = wait_until(lambda: points() > 0 and status.inner_text().lower() == "running" and points(), 240,
                       "the first loss points while the job runs")
    assert first < STEPS
    wait_until(lambda: points() > first, 120, "more loss points")
    shoot(page, artifacts, "07-job-running")
    assert_accessible(page, "job page")

    page.get_by_test_id("predictions").wait_for(timeout=120_000)
    wait_until(lambda: status.inner_text().lower() == "completed", 240, "completed")
    assert points() == STEPS
    predictions = page.get_by_test_id("predictions")
    assert predictions.locator("tbody tr").count() == 2
    cells = predictions.locator("tbody tr").first.locator("td")
    assert cells.nth(2).inner_text().strip() and cells.nth(4).inner_text() != ""  # expected text, BLEU
    history = page.get_by_role("region", name="History").inner_text().lower()
    assert history.index("queued") < history.index("running") < history.index("completed")
    log = page.get_by_test_id("log")
    wait_until(lambda: "status=completed" in log.inner_text(), 60, "the log's last line")
    page.get_by_label("Search the whole log").fill("predictions step=")
    page.get_by_role("button", name="Search").click()
    page.get_by_text(re.compile(r"^\d+ matching lines")).wait_for()
    found = log.inner_text().splitlines()
    assert len(found) == STEPS // 50 and all("predictions step=" in line for line in found), found
    with page.expect_download() as download:
        page.get_by_role("button", name="Download the whole log").click()
    whole = Path(download.value.path()).read_text()
    assert "status=completed" in whole and whole.count("train step=") == STEPS
    page.get_by_label("Search the whole log").fill("")
    shoot(page, artifacts, "08-job-completed")

    # a reload re-attaches and shows it all again
    page.reload()
    wait_until(lambda: points() == STEPS, 30, "the chart after a reload")
    page.set_viewport_size(PHONE)
    shoot(page, artifacts, "08-job-completed-phone")
    page.set_viewport_size(DESKTOP)
    watch.assert_clean()


def test_the_model_is_served_and_answers_in_the_playground(alice_session, artifacts):
    _, page, watch = alice_session
    page.get_by_role("link", name="Model", exact=True).click()
    page.get_by_role("region", name=re.compile("^Model ")).wait_for()
    page.get_by_label("Serve with").select_option("builtin")
    page.get_by_role("button", name="Serve", exact=True).click()
    page.locator(".serving .badge", has_text="ready").wait_for(timeout=180_000)
    page.get_by_text("Call it from code").click()
    snippet = page.locator("pre.code").first.inner_text()
    assert "/v1/chat/completions" in snippet and "$TUNEFLEET_API_KEY" in snippet
    page.get_by_label("Message").fill("What is the capital of Greece?")
    page.get_by_role("button", name="Send").click()
    answer = page.locator(".message.assistant pre")
    answer.wait_for(timeout=120_000)
    assert answer.inner_text().strip()
    shoot(page, artifacts, "09-model-chat")
    assert_accessible(page, "models and playground")
    page.get_by_role("button", name="Stop serving").click()
    page.locator(".serving .badge", has_text="stopped").wait_for(timeout=60_000)
    watch.assert_clean()


#: Records each status the job page's badge shows, in order, in ``window.shownStatuses``, and when it first shows
#: "stopped" in ``window.stoppedAt``.
SHOWN_STATUSES = """() => {
  window.shownStatuses = [];
  const block = document.querySelector(".progress-block");
  const note = () => {
    const text = block.querySelector(".badge")?.textContent.trim().toLowerCase();
    if (text && text !== window.shownStatuses.at(-1)) window.shownStatuses.push(text);
    if (text === "stopped" && window.stoppedAt === undefined) window.stoppedAt = performance.now();
  };
  note();
  new MutationObserver(note).observe(block, { subtree: true, childList: true, characterData: true });
}"""

#: True once the badge has shown "stopped" and a read of the job begun after that has been answered.
READ_AFTER_STOPPED = """(path) => window.stoppedAt !== undefined && performance.getEntriesByType("resource")
  .some((e) => e.name.endsWith(path) && e.startTime >= window.stoppedAt)"""


def test_a_second_job_is_stopped_from_its_page_and_retried(alice_session, artifacts):
    _, page, watch = alice_session
    page.get_by_role("link", name="Configurations").click()
    page.get_by_role("link", name="browser-run", exact=True).click()
    fill_field(page, "name", "browser-long")
    fill_field(page, "training.max_steps", 5000)
    page.get_by_role("button", name="Save as a copy").click()
    page.get_by_role("row", name=re.compile("browser-long")).get_by_role("link").click()
    page.get_by_role("button", name="Deploy…").click()
    page.get_by_role("dialog", name="Deploy").get_by_role("button", name="Deploy", exact=True).click()
    page.wait_for_url(re.compile(r"#/jobs/[0-9a-f-]{36}$"))
    first_job = page.url.rsplit("/", 1)[-1]
    status = page.locator(".progress-block .badge")
    wait_until(lambda: status.inner_text().lower() == "running", 240, "running")
    # The page reads the job again after new points. One such read, answered while the job ran, is held back
    # until the page has shown "stopped" and read the job once more, as a slow answer would be: it must not put
    # "running" back, since the stream ends with the final status and nothing would correct it.
    held = []

    def hold_the_first_read(route):
        if held:
            route.fallback()
        else:
            held.append((route, route.fetch()))

    def a_read_is_held():
        page.wait_for_timeout(200)  # lets Playwright run the route handler
        return held

    job_path = f"/api/training/jobs/{first_job}"

    def the_job(url):
        return url.endswith(job_path)

    page.route(the_job, hold_the_first_read)
    wait_until(a_read_is_held, 60, "the page to read the job")
    route, stale = held[0]
    assert stale.json()["status"] == "running"
    page.evaluate(SHOWN_STATUSES)
    page.get_by_role("button", name="Stop").click()
    page.wait_for_function(READ_AFTER_STOPPED, arg=job_path, timeout=120_000)
    with page.expect_event("requestfinished", lambda request: request == route.request):
        route.fulfill(response=stale)
    page.evaluate("() => new Promise((done) => requestAnimationFrame(() => setTimeout(done, 300)))")
    shown = page.evaluate("() => window.shownStatuses")
    assert shown[shown.index("stopped"):] == ["stopped"], f"the badge showed {shown}"
    page.unroute(the_job, hold_the_first_read)
    shoot(page, artifacts, "10-job-stopped")

    page.get_by_role("button", name="Retry").click()
    wait_until(lambda: not page.url.endswith(first_job) or page.get_by_role("alert").count(), 30, "the retry")
    assert not page.url.endswith(first_job), page.get_by_role("alert").inner_text()
    page.get_by_role("button", name="Stop").click()
    wait_until(lambda: status.inner_text().lower() == "stopped", 240, "the retry stopped")

    page.get_by_role("link", name="Jobs").click()
    table = page.get_by_test_id("jobs")
    table.wait_for()
    expect(table.locator("tbody tr")).to_have_count(3)
    headers = table.locator("thead th").all_inner_texts()
    assert headers[:9] == ["Job", "Status", "Provider", "GPU", "$/h", "Cost so far", "ETA", "Attempts", "Error"]
    shoot(page, artifacts, "11-jobs")
    assert_accessible(page, "jobs list")
    page.set_viewport_size(PHONE)
    shoot(page, artifacts, "11-jobs-phone")
    page.set_viewport_size(DESKTOP)
    page.get_by_role("link", name="Models", exact=True).click()
    page.get_by_role("heading", level=1, name="Models").wait_for()
    page.wait_for_load_state("networkidle")
    shoot(page, artifacts, "12-models")
    watch.assert_clean()


def test_the_jobs_list_follows_a_job_it_did_not_start_without_a_reload(alice_session, stack, artifacts):
    import httpx

    key, page, watch = alice_session
    page.get_by_role("link", name="Jobs").click()
    table = page.get_by_test_id("jobs")
    table.wait_for()
    before = table.locator("tbody tr").count()
    page.wait_for_function("() => document.querySelector('.live')?.textContent.includes('live')")
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as api:
        config = api.get("/api/training/configurations").json()["configurations"][-1]  # browser-run
        job = api.post("/api/training/deploy/local", json={"configuration_id": config["id"]}).json()["job_id"]
    row = table.locator(f'tr[data-job="{job}"]')
    row.wait_for(timeout=30_000)
    expect(table.locator("tbody tr")).to_have_count(before + 1)
    wait_until(lambda: row.locator(".badge").inner_text().lower() == "running", 240, "running in the list")
    wait_until(lambda: row.locator(".badge").inner_text().lower() == "completed", 240, "completed in the list")
    watch.assert_clean()


def test_a_second_user_sees_none_of_the_first_users_things(browser, stack, new_user, alice_session, artifacts):
    _, alice_page, _ = alice_session
    alice_job = alice_page.evaluate("""() => fetch('/api/training/jobs', {headers: {Authorization: 'Bearer ' +
        sessionStorage.getItem('tunefleet.key')}}).then(r => r.json()).then(j => j[0].job_id)""")
    context, page, watch = open_dashboard(browser, stack)
    try:
        sign_in(page, new_user("browser-bob"))
        page.get_by_text("No jobs yet").wait_for()
        page.get_by_role("link", name="Data sets").click()
        page.get_by_text("None yet.").wait_for()
        page.get_by_role("link", name="Models").click()
        page.get_by_text("No models yet").wait_for()
        page.goto(f"/ui/#/jobs/{alice_job}")
        page.get_by_role("alert").wait_for()
        assert "not found" in page.get_by_role("alert").inner_text().lower()
        shoot(page, artifacts, "13-other-user")
        watch.assert_clean()
    finally:
        context.close()


def test_settings_keep_credentials_write_only_and_show_webhook_deliveries_and_keys(alice_session, stack, artifacts):
    from tests.cloudstack import RUNPOD_KEY
    from tests.webhooks import Receiver

    key, page, watch = alice_session
    page.get_by_role("link", name="Settings").click()
    runpod = page.get_by_role("form", name="runpod credentials")
    runpod.get_by_label("API key").fill(RUNPOD_KEY)  # the emulated RunPod's account: its offers are read with it
    runpod.get_by_role("button", name="Store").click()
    runpod.get_by_role("status").wait_for()
    assert "cannot be read back" in runpod.get_by_role("status").inner_text()
    assert runpod.locator("h3 .ok").inner_text().startswith("stored")
    assert runpod.get_by_label("API key").input_value() == ""  # it does not come back
    assert RUNPOD_KEY not in page.content()

    # the deploy dialog names what a provider still needs, with the way to add it
    page.get_by_role("link", name="Configurations").click()
    page.get_by_role("link", name="browser-run", exact=True).click()
    page.get_by_role("button", name="Deploy…").click()
    dialog = page.get_by_role("dialog", name="Deploy")
    dialog.get_by_label("Provider").select_option("lambda")
    assert "needs your lambda credentials" in dialog.get_by_role("status").inner_text()
    assert dialog.get_by_role("button", name="Deploy", exact=True).is_disabled()
    dialog.get_by_label("Provider").select_option("runpod")
    expect(dialog.get_by_role("status")).to_have_count(0)
    dialog.get_by_label("GPU").locator("option").nth(1).wait_for(state="attached")
    gpus = dialog.get_by_label("GPU").locator("option").all_inner_texts()
    assert any("GB" in g and "$" in g and "/h" in g for g in gpus), gpus
    dialog.get_by_role("button", name="Close").click()

    page.get_by_role("link", name="Settings").click()
    with Receiver() as hook:
        page.get_by_label("URL").fill(hook.url)
        page.get_by_role("button", name="Add").click()
        secret = page.locator("p.ok code").first
        secret.wait_for()
        hook.secret = secret.inner_text()  # the signing secret the page showed is the one the deliveries carry
        page.get_by_role("button", name="Send a test").click()
        wait_until(lambda: hook.accepted(), 60, "the test delivery")
        page.get_by_role("button", name="Show deliveries").click()
        page.get_by_role("table", name="Deliveries").locator("tbody tr").first.wait_for()
        assert "delivered" in page.get_by_role("table", name="Deliveries").inner_text().lower()

    page.get_by_role("button", name="Create a key").click()
    made = page.locator("p.ok code", has_text="tf_")
    made.wait_for()
    new_key = made.inner_text()
    assert new_key != key and new_key.startswith("tf_")
    keys = page.locator("section", has_text="API keys").locator("tbody tr")
    wait_until(lambda: keys.count() == 2, 10, "the new key in the list")
    shoot(page, artifacts, "14-settings")
    assert_accessible(page, "settings")
    watch.assert_clean()
