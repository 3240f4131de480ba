"""One rule for who sees which reads and readers (tasks.selectors.reader_visibility), on every path:
managers every read with usernames, QA submitted reads by pseudonym only, clients tier aggregates."""

import json

import pytest

from tasks.queue import claim_next_read
from tasks.reads import save_draft, submit_read

pytestmark = pytest.mark.django_db

DRAFT = [{"label": "finding_laterality", "value": "right"}]


@pytest.fixture
def half_read(cast, queued):
    """The first task with one submitted read (second_annotator) and one open read with a draft (annotator)."""
    submitted = claim_next_read(cast.second_annotator)
    submit_read(submitted.read.pk, cast.second_annotator, [{"label": "finding_laterality", "value": "left"}])
    held = claim_next_read(cast.annotator)
    assert held.task.pk == submitted.task.pk
    save_draft(held.read.pk, cast.annotator, DRAFT)
    return submitted.task, submitted.read, held.read


def test_qa_sees_only_submitted_reads_by_pseudonym_in_task_detail(cast, api, half_read):
    task, submitted, held = half_read
    detail = api(cast.qa).get(f"/api/projects/{cast.project.pk}/tasks/{task.pk}/")
    assert detail.status_code == 200
    reads = detail.json()["reads"]
    assert [r["id"] for r in reads] == [submitted.pk]  # no open read, so no draft and no holder
    assert reads[0]["reader"] is None and reads[0]["reader_pseudonym"] == cast.second_annotator.pseudonym
    text = json.dumps(detail.json())
    assert cast.annotator.username not in text and cast.second_annotator.username not in text
    assert cast.annotator.pseudonym not in text and "right" not in text


def test_managers_still_see_open_reads_with_drafts_and_holders_in_task_detail(cast, api, half_read):
    task, submitted, held = half_read
    reads = api(cast.manager).get(f"/api/projects/{cast.project.pk}/tasks/{task.pk}/").json()["reads"]
    by_id = {r["id"]: r for r in reads}
    assert set(by_id) == {submitted.pk, held.pk}
    assert by_id[held.pk]["draft"] == DRAFT and by_id[held.pk]["reader"] == cast.annotator.username
    assert by_id[held.pk]["reader_pseudonym"] == cast.annotator.pseudonym


def test_qa_reads_list_and_task_detail_show_the_same_reads_without_usernames(cast, api, half_read):
    task, submitted, _ = half_read
    listed = api(cast.qa).get(f"/api/reads/?task={task.pk}").json()["results"]
    detail = api(cast.qa).get(f"/api/projects/{cast.project.pk}/tasks/{task.pk}/").json()["reads"]
    assert [r["id"] for r in listed] == [r["id"] for r in detail] == [submitted.pk]
    assert listed[0]["reader"] is None and listed[0]["reader_pseudonym"] == cast.second_annotator.pseudonym


def test_qa_cannot_find_who_holds_open_reads_through_the_holder_filter(cast, api, half_read):
    url = f"/api/projects/{cast.project.pk}/tasks/?holder={cast.annotator.pk}"
    assert api(cast.qa).get(url).status_code == 403
    assert [t["id"] for t in api(cast.manager).get(url).json()["results"]] == [half_read[0].pk]


def test_clients_see_the_workforce_per_tier_only(cast, api):
    readers = [cast.annotator, cast.second_annotator, cast.radiologist, cast.neuro_subspecialist,
               cast.breast_subspecialist]
    response = api(cast.client_viewer).get(f"/api/projects/{cast.project.pk}/workforce/")
    assert response.status_code == 200
    rows = {row["tier"]: row for row in response.json()}
    assert rows["Annotator"]["readers"] == 2 and rows["Radiologist"]["readers"] == 1
    assert rows["Sub-specialist"]["readers"] == 2
    text = json.dumps(response.json())
    for reader in readers:
        assert reader.username not in text and reader.pseudonym not in text
    assert "neuro" not in text and "breast" not in text and "subspecialties" not in text

    qa = {row["reader"] for row in api(cast.qa).get(f"/api/projects/{cast.project.pk}/workforce/").json()}
    assert qa == {r.pseudonym for r in readers}
    manager = {row["reader"] for row in api(cast.manager).get(f"/api/projects/{cast.project.pk}/workforce/").json()}
    assert manager == {r.username for r in readers}


def test_clients_get_concordance_scorecards_per_tier_and_qa_by_pseudonym(cast, api, queued):
    for _ in queued:
        for reader in (cast.annotator, cast.second_annotator):
            claim = claim_next_read(reader)
            submit_read(claim.read.pk, reader, [{"label": "finding_laterality", "value": "left"}])
    url = f"/api/projects/{cast.project.pk}/reports/concordance/"
    client = api(cast.client_viewer).get(url).json()
    assert "scorecards" not in client
    assert [(c["tier"], c["readers"], c["reads"]) for c in client["scorecards_by_tier"]] == [("Annotator", 2, 6)]
    text = json.dumps(client)
    for reader in (cast.annotator, cast.second_annotator):
        assert reader.username not in text and reader.pseudonym not in text
    qa = api(cast.qa).get(url).json()
    assert {c["reader"] for c in qa["scorecards"]} == {cast.annotator.pseudonym, cast.second_annotator.pseudonym}
    manager = api(cast.manager).get(url).json()
    assert {c["reader"] for c in manager["scorecards"]} == {cast.annotator.username, cast.second_annotator.username}
