"""The dashboard pages: who may open them (as the API: 404 unseen, 403 not allowed), and that they
show the project's real numbers (progress document and concordance rows)."""

import re

import pytest
from django.test import Client

from audit.models import AuditEvent
from tasks.creation import create_tasks
from tasks.progress import project_progress
from tasks.queue import claim_next_read
from tasks.reads import submit_read
from tests.conftest import PASSWORD
from tests.tasks.conftest import add_ct_studies

pytestmark = pytest.mark.django_db


def _browser(user) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def double_read(cast, values):
    """Two readers read the next task with these laterality values (agreeing or not)."""
    for reader, value in zip((cast.annotator, cast.second_annotator), values, strict=True):
        claim = claim_next_read(reader)
        submit_read(claim.read.pk, reader, [{"label": "finding_laterality", "value": value}])
    return claim.task


@pytest.fixture
def worked(cast):
    """Three tasks: one agreed, one disputed (awaiting adjudication), one still queued."""
    add_ct_studies(cast.project, 3)
    create_tasks(cast.project, by=cast.manager)
    double_read(cast, ["left", "left"])
    double_read(cast, ["left", "right"])
    return cast


@pytest.mark.parametrize("role,status", [
    ("manager", 200), ("client_viewer", 200), ("qa", 200), ("superuser", 200),
    ("annotator", 403), ("radiologist", 403), ("auditor", 403), ("privacy_officer", 403),
    ("outsider", 404), ("foreign_manager", 404),
])
def test_only_members_who_may_see_progress_open_a_project_dashboard(cast, role, status):
    response = _browser(cast.user(role)).get(f"/dashboard/projects/{cast.project.pk}/")
    assert response.status_code == status
    outcome = "allowed" if status == 200 else "denied"
    assert AuditEvent.objects.filter(object_type="tasks.dashboard", project_id=cast.project.pk,
                                     outcome=outcome).exists()


def test_anonymous_visitors_are_sent_to_the_login_page(cast):
    response = _browser(None).get(f"/dashboard/projects/{cast.project.pk}/")
    assert response.status_code == 302 and response["Location"].startswith("/dashboard/login/")


def test_a_client_logs_in_with_the_form_and_lists_only_their_projects(cast):
    browser = Client()
    response = browser.post("/dashboard/login/", {"username": "client_viewer", "password": PASSWORD})
    assert response.status_code == 302 and response["Location"] == "/dashboard/"
    page = browser.get("/dashboard/").content.decode()
    assert cast.project.name in page and cast.foreign_project.name not in page


def test_the_login_form_is_throttled_after_repeated_failures(cast, settings):
    settings.LOGIN_THROTTLE_ATTEMPTS = 2
    browser = Client()
    for _ in range(2):
        assert browser.post("/dashboard/login/", {"username": "client_viewer", "password": "wrong"}).status_code == 200
    refused = browser.post("/dashboard/login/", {"username": "client_viewer", "password": PASSWORD})
    assert refused.status_code == 200 and "Too many failed logins" in refused.content.decode()


def _cell(html: str, attribute: str, value: str) -> str:
    match = re.search(rf'{attribute}="{re.escape(value)}"[^>]*>([^<]*)<', html)
    assert match, f"{attribute}={value} not on the page"
    return match.group(1).strip()


def test_the_page_shows_the_progress_and_concordance_numbers(worked):
    cast = worked
    html = _browser(cast.client_viewer).get(f"/dashboard/projects/{cast.project.pk}/").content.decode()
    progress = project_progress(cast.project, user=cast.client_viewer)
    assert progress["tasks"]["total"] == 3 and progress["tasks"]["done"] == 1
    assert _cell(html, "data-figure", "total") == "3" and _cell(html, "data-figure", "done") == "1"
    assert _cell(html, "data-state", "queued") == str(progress["tasks"]["by_state"]["queued"]) == "1"
    assert _cell(html, "data-state", "awaiting_adjudication") == "1"
    assert _cell(html, "data-figure", "awaiting_adjudication") == "1"
    reads_today = progress["throughput"]["days"][-1]["reads"]
    assert reads_today == 4 and 'data-reads="4"' in html  # the chart's bar for today
    assert 'data-concordance="finding_laterality:reader_vs_reader"' in html
    # a client sees no reader identity, not even a pseudonym
    for reader in (cast.annotator, cast.second_annotator):
        assert reader.username not in html and reader.pseudonym not in html


def test_the_numbers_fragment_is_what_the_feed_client_reloads(worked):
    cast = worked
    fragment = _browser(cast.manager).get(f"/dashboard/projects/{cast.project.pk}/?part=numbers").content.decode()
    assert "<html" not in fragment and _cell(fragment, "data-figure", "done") == "1"
