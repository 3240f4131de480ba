"""/api/audit/events/: filters, and scoping to the projects where the caller holds view_audit."""

from datetime import UTC, datetime
from unittest import mock

import pytest

from audit.trail import record_event

pytestmark = pytest.mark.django_db

URL = "/api/audit/events/"


@pytest.fixture
def events(cast):
    """Named events in both projects; the API's own access events are told apart by action."""
    made = {}
    with mock.patch("audit.trail.timezone.now", return_value=datetime(2025, 1, 10, 9, 0, tzinfo=UTC)):
        made["old_view"] = record_event("view", actor=cast.radiologist, project=cast.project, study_uid="1.2.840.1")
    with mock.patch("audit.trail.timezone.now", return_value=datetime(2025, 6, 1, 9, 0, tzinfo=UTC)):
        made["submit"] = record_event("submit", actor=cast.annotator, project=cast.project, study_uid="1.2.840.2")
        made["denied"] = record_event("claim", actor=cast.annotator, project=cast.project, outcome="denied",
                                      reason="403 permission_denied: tier")
        made["foreign"] = record_event("submit", actor=cast.foreign_manager, project=cast.foreign_project,
                                       study_uid="1.2.840.2")
    made["unscoped"] = record_event("login", actor=cast.annotator)
    return made


def _ids(client, **params):
    response = client.get(URL, {"page_size": 500, **params})
    assert response.status_code == 200, response.content
    return {row["id"] for row in response.json()["results"]}


def _pk(events, *names):
    return {events[n].pk for n in names}


def test_each_filter_selects_the_matching_events(cast, api, events):
    client = api(cast.superuser)
    mine = _pk(events, "old_view", "submit", "denied", "foreign", "unscoped")
    assert _ids(client, study="1.2.840.2") == _pk(events, "submit", "foreign")
    assert _ids(client, user=cast.annotator.pk) & mine == _pk(events, "submit", "denied", "unscoped")
    assert _ids(client, project=cast.foreign_project.pk) & mine == _pk(events, "foreign")
    assert _ids(client, action="submit") == _pk(events, "submit", "foreign")
    assert _ids(client, outcome="denied") & mine == _pk(events, "denied")
    assert _ids(client, since="2025-01-01T00:00:00Z", until="2025-02-01T00:00:00Z") == _pk(events, "old_view")
    assert _ids(client, since="2025-05-01T00:00:00Z", until="2025-07-01T00:00:00Z", action="submit",
                project=cast.project.pk) == _pk(events, "submit")


def test_results_are_newest_first_with_hashes(cast, api, events):
    rows = api(cast.superuser).get(URL, {"action": "submit"}).json()["results"]
    assert [r["id"] for r in rows] == [events["foreign"].pk, events["submit"].pk]
    assert rows[0]["hash"] == events["foreign"].hash and rows[0]["prev_hash"] == events["foreign"].prev_hash


def test_manager_sees_only_events_of_projects_they_manage(cast, api, events):
    seen = _ids(api(cast.manager))
    assert _pk(events, "old_view", "submit", "denied") <= seen
    assert not seen & _pk(events, "foreign", "unscoped")
    assert not _ids(api(cast.manager), project=cast.foreign_project.pk)
    assert _ids(api(cast.foreign_manager), action="submit") == _pk(events, "foreign")


def test_auditor_sees_their_projects_events(cast, api, events):
    seen = _ids(api(cast.auditor))
    assert _pk(events, "old_view", "submit", "denied") <= seen
    assert not seen & _pk(events, "foreign", "unscoped")
    detail = api(cast.auditor).get(f"{URL}{events['submit'].pk}/")
    assert detail.status_code == 200 and detail.json()["study_uid"] == "1.2.840.2"
    assert api(cast.auditor).get(f"{URL}{events['foreign'].pk}/").status_code == 404


@pytest.mark.parametrize("role", ["client_viewer", "annotator", "radiologist", "qa", "outsider"])
def test_members_without_view_audit_see_none(cast, api, events, role):
    assert _ids(api(cast.user(role))) == set()
    assert api(cast.user(role)).get(f"{URL}{events['submit'].pk}/").status_code == 404


def test_querying_the_trail_is_itself_recorded(cast, api, events):
    api(cast.auditor).get(URL, {"project": cast.project.pk, "action": "submit"})
    rows = api(cast.superuser).get(URL, {"action": "list", "user": cast.auditor.pk}).json()["results"]
    assert len(rows) == 1
    assert (rows[0]["object_type"], rows[0]["project_id"], rows[0]["outcome"]) == (
        "audit.auditevent", cast.project.pk, "allowed")
