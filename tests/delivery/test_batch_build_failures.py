"""A batch's delivery build never stays `building` for good: a job error marks it failed with a
short reason (no exception text in the API), a build past BATCH_BUILD_TIMEOUT is marked failed by
the beat sweep or by the next rebuild request, a failed build can be rebuilt, and concurrent
rebuild requests start one build."""

import json
import logging
import threading
from datetime import timedelta

import pytest
from django.db import connections
from django.db.models import F

from audit.models import AuditEvent
from core.celery import app
from tasks import batches
from tasks.batches import build_batch_delivery_job, fail_stale_batch_builds_job
from tasks.exports import builder
from tasks.models import Batch
from tests.delivery.conftest import consensus_tasks, laterality

pytestmark = pytest.mark.django_db

# Text no API answer may carry: exception messages can quote anything, PHI included.
SECRET = "PAT^Doe John 1970-01-01"
_real_build_files = builder.build_files


class Worker:
    """Stands in for Celery's broker and worker: build messages go through JSON, as Celery sends
    them, and are run when ``running``; otherwise they are lost (a dead worker, a lost message)."""

    def __init__(self):
        self.running, self.sent = True, []

    def apply_async(self, args, **options):
        message = json.loads(json.dumps(args))
        self.sent.append(message)
        if self.running:
            build_batch_delivery_job.apply(args=message)


@pytest.fixture
def worker(monkeypatch):
    worker = Worker()
    monkeypatch.setattr(build_batch_delivery_job, "apply_async", worker.apply_async)
    return worker


@pytest.fixture
def timeout(settings):
    settings.BATCH_BUILD_TIMEOUT = 600
    return 600


@pytest.fixture
def batch(cast, api):
    tasks = consensus_tasks(cast, api, [laterality("left")])
    created = api(cast.manager).post(_url(cast), {"name": "week 1", "tasks": [t.pk for t in tasks]}, format="json")
    assert created.status_code == 201, created.json()
    return Batch.objects.get(pk=created.json()["id"])


def _url(cast, suffix=""):
    return f"/api/projects/{cast.project.pk}/batches/{suffix}"


def _post(api, cast, batch, action, capture):
    with capture(execute=True):
        return api(cast.manager).post(_url(cast, f"{batch.pk}/{action}/"))


def _shown(api, cast, batch) -> dict:
    response = api(cast.manager).get(_url(cast, f"{batch.pk}/"))
    assert response.status_code == 200
    return response.json()


def _age(batch, seconds):
    """The batch's build started this many seconds earlier than recorded."""
    Batch.objects.filter(pk=batch.pk).update(export_started_at=F("export_started_at") - timedelta(seconds=seconds))


def _raise(*args, **kwargs):
    raise ValueError(SECRET)


def test_an_export_that_raises_marks_the_batch_failed_with_a_short_reason_then_a_rebuild_succeeds(
        cast, api, batch, worker, monkeypatch, caplog, django_capture_on_commit_callbacks):
    monkeypatch.setattr(builder, "build_files", _raise)
    with caplog.at_level(logging.ERROR, logger="tasks.batches"):
        delivered = _post(api, cast, batch, "deliver", django_capture_on_commit_callbacks)
    assert delivered.status_code == 200
    shown = _shown(api, cast, batch)
    assert shown["export_state"] == "failed" and shown["exports"] == []
    assert shown["export_error"] == "The export files could not be built (ValueError); the server log has the details."
    assert SECRET not in json.dumps(shown) and SECRET in caplog.text  # the detail is logged, not served
    failure = AuditEvent.objects.get(action="export", object_id=str(batch.pk), extra__change="build")
    assert failure.outcome == "error" and failure.reason == shown["export_error"]
    assert SECRET not in json.dumps(failure.extra)

    monkeypatch.setattr(builder, "build_files", _real_build_files)
    rebuilt = _post(api, cast, batch, "exports", django_capture_on_commit_callbacks)
    assert rebuilt.status_code == 202, rebuilt.json()
    shown = _shown(api, cast, batch)
    assert shown["export_state"] == "ready" and shown["export_error"] == "" and shown["exports"]


def test_a_report_that_raises_marks_the_batch_failed_instead_of_leaving_it_building(
        cast, api, batch, worker, monkeypatch, django_capture_on_commit_callbacks):
    monkeypatch.setattr(batches, "concordance_report", _raise)
    assert _post(api, cast, batch, "deliver", django_capture_on_commit_callbacks).status_code == 200
    shown = _shown(api, cast, batch)
    assert shown["export_state"] == "failed" and shown["report_computed_at"] is None
    assert shown["export_error"] == ("The concordance report could not be computed (ValueError); the server log "
                                     "has the details.")
    monkeypatch.undo()
    monkeypatch.setattr(build_batch_delivery_job, "apply_async", worker.apply_async)
    assert _post(api, cast, batch, "exports", django_capture_on_commit_callbacks).status_code == 202
    shown = _shown(api, cast, batch)
    assert shown["export_state"] == "ready" and shown["report_computed_at"] is not None


def test_a_build_stuck_past_the_timeout_is_marked_failed_by_the_sweep_and_can_be_rebuilt(
        cast, api, batch, worker, timeout, django_capture_on_commit_callbacks):
    worker.running = False  # the worker dies: the build job never runs
    assert _post(api, cast, batch, "deliver", django_capture_on_commit_callbacks).status_code == 200
    assert _shown(api, cast, batch)["export_state"] == "building"
    refused = _post(api, cast, batch, "exports", django_capture_on_commit_callbacks)
    assert refused.status_code == 409 and refused.json()["code"] == "exports_building"
    assert fail_stale_batch_builds_job.apply().get() == 0  # not yet past the bound

    _age(batch, timeout + 1)
    assert fail_stale_batch_builds_job.apply().get() == 1
    shown = _shown(api, cast, batch)
    assert shown["export_state"] == "failed" and shown["export_error"] == "The build did not finish within 600 s."
    swept = AuditEvent.objects.get(action="export", object_id=str(batch.pk), extra__change="build_timeout")
    assert swept.outcome == "error" and swept.reason == shown["export_error"] and swept.actor_id is None
    assert fail_stale_batch_builds_job.apply().get() == 0

    worker.running = True
    assert _post(api, cast, batch, "exports", django_capture_on_commit_callbacks).status_code == 202
    shown = _shown(api, cast, batch)
    assert shown["export_state"] == "ready" and shown["export_error"] == ""
    assert AuditEvent.objects.filter(action="export", object_id=str(batch.pk), extra__change="rebuild",
                                     extra__after="failed", actor_id=cast.manager.pk).exists()


def test_a_rebuild_request_marks_a_stale_build_failed_itself_and_rebuilds(
        cast, api, batch, worker, timeout, django_capture_on_commit_callbacks):
    worker.running = False
    _post(api, cast, batch, "deliver", django_capture_on_commit_callbacks)
    _age(batch, timeout + 1)
    worker.running = True
    rebuilt = _post(api, cast, batch, "exports", django_capture_on_commit_callbacks)
    assert rebuilt.status_code == 202, rebuilt.json()
    assert _shown(api, cast, batch)["export_state"] == "ready"
    timed_out = AuditEvent.objects.get(action="export", object_id=str(batch.pk), extra__change="build_timeout")
    assert timed_out.reason == "The build did not finish within 600 s." and timed_out.actor_id == cast.manager.pk


def test_the_late_job_of_a_build_marked_failed_builds_and_records_nothing(
        cast, api, batch, worker, timeout, monkeypatch, django_capture_on_commit_callbacks):
    worker.running = False
    _post(api, cast, batch, "deliver", django_capture_on_commit_callbacks)
    _age(batch, timeout + 1)
    assert batches.fail_stale_builds() == 1
    _post(api, cast, batch, "exports", django_capture_on_commit_callbacks)  # the rebuild's message, lost as well
    first, second = worker.sent
    calls = []
    monkeypatch.setattr(builder, "build_files", lambda b: calls.append(b.pk) or _real_build_files(b))

    build_batch_delivery_job.apply(args=first)  # the first build's message, delivered at last
    assert calls == [] and Batch.objects.get(pk=batch.pk).export_state == "building"
    build_batch_delivery_job.apply(args=second)
    assert calls == [batch.pk] and Batch.objects.get(pk=batch.pk).export_state == "ready"
    build_batch_delivery_job.apply(args=second)  # redelivered: that build is over
    assert calls == [batch.pk]


def test_the_sweep_runs_in_beat_and_its_job_is_registered(settings):
    (entry,) = [e for e in settings.CELERY_BEAT_SCHEDULE.values() if e["task"] == "tasks.fail_stale_batch_builds"]
    assert entry["schedule"] <= 600 and "tasks.fail_stale_batch_builds" in app.tasks


def test_openapi_shows_the_build_state_reason_and_start(api, cast):
    schema = api(cast.manager).get("/api/schema/?format=json").json()
    fields = schema["components"]["schemas"]["Batch"]["properties"]
    assert {"export_state", "export_error", "export_started_at"} <= set(fields)
    assert "BATCH_BUILD_TIMEOUT" in fields["export_state"]["description"]
    rebuild = schema["paths"]["/api/projects/{project_pk}/batches/{id}/exports/"]["post"]
    assert "409" in rebuild["responses"]


@pytest.mark.django_db(transaction=True)
def test_concurrent_rebuild_requests_build_once(cast, api, batch, monkeypatch):
    Batch.objects.filter(pk=batch.pk).update(state=Batch.State.DELIVERED, export_state=Batch.ExportState.FAILED,
                                             export_error="The build did not finish within 600 s.")
    release, calls = threading.Event(), []

    def slow_build(b):
        calls.append(b.pk)
        release.wait(timeout=60)  # holds the first build open until the other request has its answer
        return _real_build_files(b)

    monkeypatch.setattr(builder, "build_files", slow_build)
    clients = [api(cast.manager), api(cast.manager)]
    start, answers = threading.Barrier(len(clients)), []

    def rebuild(client):
        try:
            start.wait(timeout=30)
            answers.append(client.post(_url(cast, f"{batch.pk}/exports/")).status_code)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=rebuild, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    for _ in range(600):
        if answers:
            break
        threads[0].join(timeout=0.1)
    release.set()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert sorted(answers) == [202, 409] and calls == [batch.pk]
    assert Batch.objects.get(pk=batch.pk).export_state == "ready"
