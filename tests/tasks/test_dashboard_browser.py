"""The dashboard in a real headless Chromium against a real ASGI server: log in with the form, see
the project's real numbers, and watch them move when readers finish a task (the live feed)."""

import os
import shutil
from pathlib import Path

import httpx
import pytest
from knox.models import AuthToken

from tasks.creation import create_tasks
from tasks.progress import project_progress
from tests.chromium import Browser, chromium_path
from tests.conftest import PASSWORD
from tests.servers import ROOT, asgi_servers
from tests.tasks.conftest import add_ct_studies
from tests.tasks.test_dashboard import double_read

pytestmark = [
    pytest.mark.skipif(chromium_path() is None, reason="needs Chromium: install Debian's `chromium` package "
                                                       "(.ci/run does) or set CHROMIUM to the browser's path"),
    pytest.mark.django_db(transaction=True),  # the server process reads what the test committed
]

FIGURES = """JSON.stringify({
  figures: Object.fromEntries([...document.querySelectorAll('[data-figure]')]
    .map(e => [e.dataset.figure, e.textContent.trim()])),
  states: Object.fromEntries([...document.querySelectorAll('[data-state]')]
    .map(e => [e.dataset.state, Number(e.textContent)])),
  bars: [...document.querySelectorAll('#throughput [data-reads]')].map(e => Number(e.dataset.reads)),
  concordance: [...document.querySelectorAll('[data-concordance]')].map(e => e.dataset.concordance),
  events: [...document.querySelectorAll('#events li')].map(e => e.dataset.event),
  text: document.body.innerText,
})"""


def test_the_dashboard_renders_real_numbers_and_follows_the_feed_in_chromium(cast, tmp_path):
    import json

    add_ct_studies(cast.project, 3)
    create_tasks(cast.project, by=cast.manager)
    double_read(cast, ["left", "left"])
    double_read(cast, ["left", "right"])
    expected = project_progress(cast.project, user=cast.client_viewer)
    tokens = {u.username: AuthToken.objects.create(u)[1] for u in (cast.annotator, cast.second_annotator)}

    with asgi_servers(1, tmp_path) as (port,), Browser(tmp_path / "profile") as browser:
        base = f"http://127.0.0.1:{port}"
        browser.navigate(f"{base}/dashboard/projects/{cast.project.pk}/")
        assert "/dashboard/login/" in browser.evaluate("location.pathname")
        browser.evaluate(f"""(() => {{
            document.querySelector('[name=username]').value = 'client_viewer';
            document.querySelector('[name=password]').value = {json.dumps(PASSWORD)};
            document.querySelector('main form').submit(); }})()""")
        browser.wait_for("document.getElementById('dashboard')?.dataset.feed === 'live'")
        before = json.loads(browser.evaluate(FIGURES))
        shot = browser.screenshot(tmp_path / "dashboard.png")

        # two readers finish the queued task through the API of the same server
        with httpx.Client(base_url=base) as http:
            for name in ("annotator", "second_annotator"):
                headers = {"Authorization": f"Token {tokens[name]}"}
                read = http.post("/api/queue/next/", json={}, headers=headers).json()["read"]
                submitted = http.post(f"/api/reads/{read}/submit/", headers=headers,
                                      json={"findings": [{"label": "finding_laterality", "value": "right"}]})
                assert submitted.status_code == 200, submitted.text
        browser.wait_for("document.querySelector('[data-figure=done]').textContent.trim() === '2'")
        after = json.loads(browser.evaluate(FIGURES))
        browser.screenshot(tmp_path / "dashboard-after.png")

    tasks = expected["tasks"]
    assert before["figures"]["total"] == str(tasks["total"]) == "3"
    assert before["figures"]["done"] == str(tasks["done"]) == "1"
    assert before["figures"]["reads_left"] == str(expected["eta"]["reads_left"])
    assert {s: n for s, n in before["states"].items() if n} == {s: n for s, n in tasks["by_state"].items() if n} == {
        "queued": 1, "awaiting_adjudication": 1, "consensus": 1}
    assert before["bars"] == [d["reads"] for d in expected["throughput"]["days"]] == [4]
    assert "finding_laterality:reader_vs_reader" in before["concordance"]
    assert cast.annotator.pseudonym not in before["text"] and cast.annotator.username not in before["text"]
    # the feed moved the numbers without a reload of the page
    assert after["figures"]["done"] == "2" and after["states"]["consensus"] == 2 and after["states"]["queued"] == 0
    assert "task.consensus" in after["events"] and after["bars"] == [6]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    out = os.environ.get("DASHBOARD_SCREENSHOT_DIR") or (ROOT / "bench" / "out" if os.environ.get("CI") else None)
    if out:  # keep the screenshots with the CI run's other outputs
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        for name in ("dashboard.png", "dashboard-after.png"):
            shutil.copy(tmp_path / name, out / name)
