"""Every role x every endpoint x own/foreign object, with the exact status code.

Somebody who cannot see an object gets 404 (its existence does not leak); somebody who can see
the project but whose role does not allow the action gets 403; anonymous callers get 401.
Later issues add their endpoints to CASES; ``test_every_api_endpoint_is_in_the_matrix`` fails
until they do.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from django.core.cache import cache
from django.db import transaction
from django.urls import URLPattern, URLResolver, get_resolver

from audit.trail import record_event
from core.dicom import synthetic
from core.memberships import grant_membership
from core.protocols import create_protocol_version
from tasks.adjudication import claim_next_adjudication
from tasks.creation import create_tasks
from tasks.models import Adjudication, Task
from tasks.queue import claim_next_read
from tests.factories import UserFactory

ROLES = ["anonymous", "outsider", "superuser", "manager", "annotator", "radiologist", "neuro_subspecialist",
         "qa", "client_viewer", "auditor", "privacy_officer"]
MEMBERS = ["manager", "annotator", "radiologist", "neuro_subspecialist", "qa", "client_viewer", "auditor",
           "privacy_officer"]


def expect(default: int, *, anonymous: int = 401, **by_role: int) -> dict[str, int]:
    table = {role: default for role in ROLES}
    table["anonymous"] = anonymous
    table.update(by_role)
    return table


def members(status: int, **by_role: int) -> dict[str, int]:
    return {**{role: status for role in MEMBERS}, **by_role}


@dataclass
class Case:
    route: str
    method: str
    path: Callable  # (cast, ctx, own: bool) -> str
    own: dict[str, int]
    foreign: dict[str, int] | None = None
    body: Callable | None = None  # (cast) -> dict
    send: Callable | None = None  # (client, path, cast) -> response, for non-JSON requests
    id: str = field(default="")


def _p(cast, own):
    return cast.project if own else cast.foreign_project


def _upload(client, path, cast):
    from tests.dicom.conftest import upload

    data = synthetic.to_bytes(synthetic.make_ct_series(n_slices=1, rows=8, cols=8, seed=99)[0])
    return client.post(path, {"files": [upload("m.dcm", data)]}, format="multipart")


def _stow(client, path, cast):
    boundary = "matrixboundary"
    ds = synthetic.make_ct_series(n_slices=1, rows=8, cols=8, seed=98)[0]
    if "/studies/" in path:  # STOW into a named study: send an instance of that study
        ds.StudyInstanceUID = path.split("/studies/")[1].split("?")[0]
    data = synthetic.to_bytes(ds)
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    body = head + data + f"\r\n--{boundary}--\r\n".encode()
    return client.generic("POST", path, body,
                          content_type=f'multipart/related; type="application/dicom"; boundary={boundary}')


def _dw(suffix=""):
    """A DICOMweb path below the own or foreign project's study, series or instance."""
    def path(c, x, o):
        d = x["dicom_own" if o else "dicom_foreign"]
        return suffix.format(study=d["study"], series=d["series"], instance=d["instance"])
    return path


def _read(suffix):
    return lambda c, x, o: suffix.format(read=x["dicom_own" if o else "dicom_foreign"]["read"])


def _adj(suffix):
    return lambda c, x, o: suffix.format(adjudication=x["dicom_own" if o else "dicom_foreign"]["adjudication"])


def _read_root(suffix):
    """A path under the read's own DICOMweb root: the study the annotator holds a read of."""
    def path(c, x, o):
        d = x["dicom_own" if o else "dicom_foreign"]
        return f"/dicomweb/reads/{d['read']}/" + suffix.format(study=d["study"], series=d["series"],
                                                                instance=d["instance"])
    return path


def _adj_root(suffix):
    """A path under the claimed adjudication's DICOMweb root, at its task's study."""
    def path(c, x, o):
        d = x["dicom_own" if o else "dicom_foreign"]
        return f"/dicomweb/adjudications/{d['adjudication']}/" + suffix.format(
            study=d["adj_study"], series=d["adj_series"], instance=d["adj_instance"])
    return path


def _pp(suffix):
    return lambda c, x, o: f"/api/projects/{_p(c, o).pk}/{suffix.format(**x['dicom_own' if o else 'dicom_foreign'])}"


def _membership_url(c, x, o):
    return f"/api/projects/{_p(c, o).pk}/memberships/{x['m_own' if o else 'm_foreign']}/"


# DICOMweb reads: managers and QA see their projects' studies; readers only those of reads they
# hold (the annotator holds one on the own project's study); clients, auditors and privacy
# officers get no pixels.
DICOM_READ = expect(404, superuser=200, manager=200, qa=200, annotator=200)  # the annotator holds a read of it
# A held read answers only its reader: anybody else, managers included, gets 404.
OWNER_ONLY = expect(404, annotator=200)
ONLY_SU = expect(404, superuser=200)
PROGRESS_VIEW = expect(404, superuser=200, **members(403, manager=200, qa=200, client_viewer=200))

CASES = [
    Case("token-obtain", "post", lambda c, x, o: "/api/auth/token/", expect(400, anonymous=400),
         body=lambda c: {"username": "nobody", "password": "not-the-password"}),
    Case("token-revoke", "post", lambda c, x, o: "/api/auth/token/revoke/", expect(204)),
    Case("token-revoke-all", "post", lambda c, x, o: "/api/auth/token/revoke-all/", expect(204)),
    Case("me", "get", lambda c, x, o: "/api/me/", expect(200)),
    Case("schema-template-list", "get", lambda c, x, o: "/api/schema-templates/", expect(200)),
    Case("schema-template-detail", "get", lambda c, x, o: "/api/schema-templates/birads/", expect(200)),
    Case("organization-list", "get", lambda c, x, o: "/api/organizations/", expect(200)),
    Case("organization-list", "post", lambda c, x, o: "/api/organizations/", expect(403, superuser=201),
         body=lambda c: {"name": "New org", "kind": "client"}),
    Case("organization-detail", "get",
         lambda c, x, o: f"/api/organizations/{(c.client_org if o else c.other_client).pk}/",
         expect(404, superuser=200, **members(200)), expect(404, superuser=200)),
    # A vendor's administrators onboard the people of the clients it serves.
    Case("organization-people", "post",
         lambda c, x, o: f"/api/organizations/{(c.client_org if o else c.other_client).pk}/people/",
         expect(404, superuser=201, **members(403, manager=201)), expect(404, superuser=201),
         body=lambda c: {"username": "newperson", "password": "a-long-enough-password-77"}),
    Case("user-list", "get", lambda c, x, o: "/api/users/", expect(200)),
    Case("user-list", "post", lambda c, x, o: "/api/users/", expect(403, superuser=201, manager=201),
         body=lambda c: {"username": "newbie", "password": "a-long-enough-password-77"}),
    Case("user-detail", "get", lambda c, x, o: f"/api/users/{(c.annotator if o else c.outsider).pk}/",
         expect(404, superuser=200, manager=200, annotator=200), expect(404, superuser=200, outsider=200)),
    Case("project-list", "get", lambda c, x, o: "/api/projects/", expect(200)),
    Case("project-list", "post", lambda c, x, o: "/api/projects/", expect(403, superuser=201, manager=201),
         body=lambda c: {"name": "New project", "client": c.client_org.pk, "modalities": ["CT"]}),
    Case("project-detail", "get", lambda c, x, o: f"/api/projects/{_p(c, o).pk}/",
         expect(404, superuser=200, **members(200)), expect(404, superuser=200)),
    Case("project-detail", "patch", lambda c, x, o: f"/api/projects/{_p(c, o).pk}/",
         expect(404, superuser=200, **members(403, manager=200)), expect(404, superuser=200),
         body=lambda c: {"description": "updated"}),
    Case("project-settings", "get", lambda c, x, o: f"/api/projects/{_p(c, o).pk}/settings/",
         expect(404, superuser=200, **members(403, manager=200)), expect(404, superuser=200)),
    Case("project-settings", "patch", lambda c, x, o: f"/api/projects/{_p(c, o).pk}/settings/",
         expect(404, superuser=200, **members(403, manager=200)), expect(404, superuser=200),
         body=lambda c: {"gold_rate": 0.1}),
    Case("membership-list", "get", lambda c, x, o: f"/api/projects/{_p(c, o).pk}/memberships/",
         expect(404, superuser=200, **members(200)), expect(404, superuser=200)),
    Case("membership-list", "post", lambda c, x, o: f"/api/projects/{_p(c, o).pk}/memberships/",
         expect(404, superuser=201, **members(403, manager=201)), expect(404, superuser=201),
         body=lambda c: {"user": c.second_annotator.pk, "role": "annotator"}),
    Case("membership-detail", "get", _membership_url,
         expect(404, superuser=200, manager=200, annotator=200), expect(404, superuser=200)),
    Case("membership-detail", "patch", _membership_url,
         expect(404, superuser=200, **members(403, manager=200)), expect(404, superuser=200),
         body=lambda c: {"is_active": True}),
    Case("membership-detail", "delete", _membership_url,
         expect(404, superuser=204, **members(403, manager=204)), expect(404, superuser=204)),
    Case("protocol-version-list", "get", lambda c, x, o: f"/api/projects/{_p(c, o).pk}/protocol-versions/",
         expect(404, superuser=200, **members(200)), expect(404, superuser=200)),
    Case("protocol-version-list", "post", lambda c, x, o: f"/api/projects/{_p(c, o).pk}/protocol-versions/",
         expect(404, superuser=201, **members(403, manager=201)), expect(404, superuser=201),
         body=lambda c: {"name": "v2"}),
    Case("protocol-version-detail", "get", lambda c, x, o: f"/api/projects/{_p(c, o).pk}/protocol-versions/1/",
         expect(404, superuser=200, **members(200)), expect(404, superuser=200)),
    Case("protocol-version-detail", "patch", lambda c, x, o: f"/api/projects/{_p(c, o).pk}/protocol-versions/2/",
         expect(404, superuser=200, **members(403, manager=200)), expect(404, superuser=200),
         body=lambda c: {"notes": "clarified"}),
    Case("study-upload", "post", _pp("studies/upload/"), expect(404, superuser=201, **members(403, manager=201)),
         expect(404, superuser=201), send=_upload),
    Case("study-list", "get", _pp("studies/"), expect(404, superuser=200, **members(403, manager=200, qa=200)),
         expect(404, superuser=200)),
    Case("study-detail", "get", _pp("studies/{study_pk}/"),
         expect(404, superuser=200, **members(403, manager=200, qa=200)), expect(404, superuser=200)),
    Case("quarantine-list", "get", _pp("quarantine/"), expect(404, superuser=200, **members(403, manager=200)),
         expect(404, superuser=200)),
    Case("quarantine-clear", "post", _pp("instances/{instance_pk}/clear-quarantine/"),
         expect(404, superuser=200, **members(403, manager=200)), expect(404, superuser=200)),
    Case("ingest-batch-list", "get", _pp("ingest-batches/"),
         expect(404, superuser=200, **members(403, manager=200, qa=200)), expect(404, superuser=200)),
    Case("pseudonym-lookup", "get", _pp("pseudonyms/?kind=study&pseudonym={study}"),
         expect(404, superuser=200, **members(403, privacy_officer=200)), expect(404, superuser=200)),
    Case("qido-studies", "get", _dw("/dicomweb/studies"), expect(200)),
    Case("qido-studies", "post", lambda c, x, o: f"/dicomweb/studies?project={_p(c, o).pk}",
         expect(404, superuser=200, **members(403, manager=200)), expect(404, superuser=200), send=_stow),
    Case("wado-study", "get", _dw("/dicomweb/studies/{study}"), DICOM_READ, ONLY_SU),
    Case("wado-study", "post",
         lambda c, x, o: f"/dicomweb/studies/{x['dicom_own' if o else 'dicom_foreign']['orig_study']}"
                         f"?project={_p(c, o).pk}",
         expect(404, superuser=200, **members(403, manager=200)), expect(404, superuser=200), send=_stow),
    Case("wado-study-metadata", "get", _dw("/dicomweb/studies/{study}/metadata"), DICOM_READ, ONLY_SU),
    Case("qido-series", "get", _dw("/dicomweb/studies/{study}/series"), DICOM_READ, ONLY_SU),
    Case("wado-series", "get", _dw("/dicomweb/studies/{study}/series/{series}"), DICOM_READ, ONLY_SU),
    Case("wado-series-metadata", "get", _dw("/dicomweb/studies/{study}/series/{series}/metadata"),
         DICOM_READ, ONLY_SU),
    Case("qido-instances", "get", _dw("/dicomweb/studies/{study}/series/{series}/instances"), DICOM_READ, ONLY_SU),
    Case("wado-instance", "get", _dw("/dicomweb/studies/{study}/series/{series}/instances/{instance}"),
         DICOM_READ, ONLY_SU),
    Case("wado-instance-metadata", "get",
         _dw("/dicomweb/studies/{study}/series/{series}/instances/{instance}/metadata"), DICOM_READ, ONLY_SU),
    Case("wado-frames", "get", _dw("/dicomweb/studies/{study}/series/{series}/instances/{instance}/frames/1"),
         DICOM_READ, ONLY_SU),
    Case("wado-bulk", "get", _dw("/dicomweb/studies/{study}/series/{series}/instances/{instance}/bulk/00100010"),
         DICOM_READ, ONLY_SU),
    Case("wado-rendered", "get", _dw("/dicomweb/studies/{study}/series/{series}/instances/{instance}/rendered"),
         DICOM_READ, ONLY_SU),
    Case("wado-thumbnail", "get", _dw("/dicomweb/studies/{study}/series/{series}/instances/{instance}/thumbnail"),
         DICOM_READ, ONLY_SU),
    Case("wado-study-thumbnail", "get", _dw("/dicomweb/studies/{study}/thumbnail"), DICOM_READ, ONLY_SU),
    Case("wado-series-thumbnail", "get", _dw("/dicomweb/studies/{study}/series/{series}/thumbnail"),
         DICOM_READ, ONLY_SU),
    *[case for route, method, suffix in (
        ("qido-studies", "get", "studies"), ("qido-studies", "post", "studies"),
        ("wado-study", "get", "studies/{study}"), ("wado-study", "post", "studies/{study}"),
        ("wado-study-metadata", "get", "studies/{study}/metadata"),
        ("wado-study-thumbnail", "get", "studies/{study}/thumbnail"),
        ("qido-series", "get", "studies/{study}/series"), ("wado-series", "get", "studies/{study}/series/{series}"),
        ("wado-series-metadata", "get", "studies/{study}/series/{series}/metadata"),
        ("wado-series-thumbnail", "get", "studies/{study}/series/{series}/thumbnail"),
        ("qido-instances", "get", "studies/{study}/series/{series}/instances"),
        ("wado-instance", "get", "studies/{study}/series/{series}/instances/{instance}"),
        ("wado-instance-metadata", "get", "studies/{study}/series/{series}/instances/{instance}/metadata"),
        ("wado-frames", "get", "studies/{study}/series/{series}/instances/{instance}/frames/1"),
        ("wado-bulk", "get", "studies/{study}/series/{series}/instances/{instance}/bulk/00100010"),
        ("wado-rendered", "get", "studies/{study}/series/{series}/instances/{instance}/rendered"),
        ("wado-thumbnail", "get", "studies/{study}/series/{series}/instances/{instance}/thumbnail"),
    ) for case in (
        # A read's root answers its reader alone, and takes only SEG and SR (the CT sent here: 400).
        Case(f"read-{route}", method, _read_root(suffix),
             expect(404, annotator=400 if method == "post" else 200), expect(404),
             send=_stow if method == "post" else None),
        # An adjudication's root answers the adjudicator holding it, and stores nothing (405).
        Case(f"adjudication-{route}", method, _adj_root(suffix),
             expect(404, radiologist=405 if method == "post" else 200), expect(404),
             send=_stow if method == "post" else None),
    )],
    # Annotators take production reads; radiologists the reads that build the gold reference.
    Case("queue-next", "post", lambda c, x, o: "/api/queue/next/", expect(204, annotator=200, radiologist=200)),
    Case("queue-mine", "get", lambda c, x, o: "/api/queue/mine/", expect(200)),
    Case("read-list", "get", lambda c, x, o: "/api/reads/", expect(200)),
    Case("read-detail", "get", _read("/api/reads/{read}/"),
         expect(404, superuser=200, manager=200, annotator=200), ONLY_SU),
    Case("read-heartbeat", "post", _read("/api/reads/{read}/heartbeat/"), OWNER_ONLY, expect(404)),
    Case("read-release", "post", _read("/api/reads/{read}/release/"), OWNER_ONLY, expect(404)),
    Case("read-submit", "post", _read("/api/reads/{read}/submit/"), OWNER_ONLY, expect(404),
         body=lambda c: {"findings": []}),
    Case("read-draft", "put", _read("/api/reads/{read}/draft/"), OWNER_ONLY, expect(404),
         body=lambda c: {"draft": []}),
    Case("task-list", "get", _pp("tasks/"), expect(404, superuser=200, **members(403, manager=200, qa=200)),
         ONLY_SU),
    Case("task-create", "post", _pp("tasks/create/"), expect(404, superuser=201, **members(403, manager=201)),
         expect(404, superuser=201)),
    Case("task-detail", "get", _pp("tasks/{task}/"), expect(404, superuser=200, **members(403, manager=200, qa=200)),
         ONLY_SU),
    Case("task-cancel", "post", _pp("tasks/{task}/cancel/"), expect(404, superuser=200, **members(403, manager=200)),
         ONLY_SU),
    Case("read-reassign", "post", _pp("reads/{read}/reassign/"),
         expect(404, superuser=200, **members(403, manager=200)), expect(404, superuser=400),
         body=lambda c: {"reader": c.second_annotator.pk}),
    Case("task-reference", "post", _pp("tasks/{gold_task}/reference/"),
         expect(404, superuser=201, **members(403, manager=201)), expect(404, superuser=201),
         body=lambda c: {"findings": [{"label": "finding_laterality", "value": "left"}]}),
    Case("workforce", "get", _pp("workforce/"),
         expect(404, superuser=200, **members(403, manager=200, qa=200, client_viewer=200)), ONLY_SU),
    Case("concordance-report", "get", _pp("reports/concordance/"),
         expect(404, superuser=200, **members(403, manager=200, qa=200, client_viewer=200)), ONLY_SU),
    Case("project-progress", "get", _pp("progress/"),
         expect(404, superuser=200, **members(403, manager=200, qa=200, client_viewer=200)), ONLY_SU),
    # Delivery batches: managers write; whoever sees progress (QA, the client) reads and downloads.
    Case("batch-list", "get", _pp("batches/"), PROGRESS_VIEW, ONLY_SU),
    Case("batch-list", "post", _pp("batches/"), expect(404, superuser=201, **members(403, manager=201)),
         expect(404, superuser=201), body=lambda c: {"name": "new batch"}),
    Case("batch-detail", "get", _pp("batches/{batch}/"), PROGRESS_VIEW, ONLY_SU),
    Case("batch-tasks", "post", _pp("batches/{empty_batch}/tasks/"),  # the task has no consensus: a clear 400
         expect(404, superuser=400, **members(403, manager=400)), expect(404, superuser=400),
         body=lambda c: {"tasks": [1]}),
    Case("batch-deliver", "post", _pp("batches/{empty_batch}/deliver/"),  # empty: a clear 400
         expect(404, superuser=400, **members(403, manager=400)), expect(404, superuser=400)),
    Case("batch-report", "get", _pp("batches/{batch}/report/"), PROGRESS_VIEW, ONLY_SU),
    Case("batch-report", "post", _pp("batches/{batch}/report/"),
         expect(404, superuser=202, **members(403, manager=202)), expect(404, superuser=202)),
    Case("batch-costs", "get", _pp("batches/{batch}/costs/"), PROGRESS_VIEW, ONLY_SU),
    Case("batch-exports", "post", _pp("batches/{batch}/exports/"),
         expect(404, superuser=202, **members(403, manager=202)), expect(404, superuser=202)),
    Case("batch-export-download", "get", _pp("batches/{batch}/exports/findings.json/"), PROGRESS_VIEW, ONLY_SU),
    Case("adjudication-next", "post", lambda c, x, o: "/api/adjudications/next/",
         expect(204, radiologist=200, neuro_subspecialist=200)),
    Case("adjudication-detail", "get", _adj("/api/adjudications/{adjudication}/"),
         expect(404, superuser=200, manager=200, radiologist=200), ONLY_SU),
    Case("adjudication-resolve", "post", _adj("/api/adjudications/{adjudication}/resolve/"),
         expect(404, radiologist=200), expect(404),
         body=lambda c: {"resolution": "new", "findings": [{"label": "finding_laterality", "value": "left"}],
                         "rationale": "left on review"}),
    Case("adjudication-release", "post", _adj("/api/adjudications/{adjudication}/release/"),
         expect(404, radiologist=200), expect(404)),
    Case("project-adjudication-list", "get", _pp("adjudications/"),
         expect(404, superuser=200, **members(403, manager=200, qa=200)), ONLY_SU),
    # Active learning: progress viewers (managers, QA, clients) see models, settings and jobs;
    # managers change settings and start jobs.
    Case("model-version-list", "get", _pp("models/"),
         expect(404, superuser=200, **members(403, manager=200, qa=200, client_viewer=200)), ONLY_SU),
    Case("learning-config", "get", _pp("learning/"),
         expect(404, superuser=200, **members(403, manager=200, qa=200, client_viewer=200)), ONLY_SU),
    Case("learning-config", "patch", _pp("learning/"),
         expect(404, superuser=200, **members(403, manager=200)), ONLY_SU, body=lambda c: {"epochs": 3}),
    Case("learning-job-list", "get", _pp("learning/jobs/"),
         expect(404, superuser=200, **members(403, manager=200, qa=200, client_viewer=200)), ONLY_SU),
    Case("learning-job-list", "post", _pp("learning/jobs/"),
         expect(404, superuser=202, **members(403, manager=202)), expect(404, superuser=202),
         body=lambda c: {"kind": "score"}),
    Case("learning-job-detail", "get", _pp("learning/jobs/{learning_job}/"),
         expect(404, superuser=200, **members(403, manager=200, qa=200, client_viewer=200)), ONLY_SU),
    Case("audit-event-list", "get", lambda c, x, o: "/api/audit/events/", expect(200)),
    Case("audit-event-detail", "get",
         lambda c, x, o: f"/api/audit/events/{x['e_own' if o else 'e_foreign']}/",
         expect(404, superuser=200, manager=200, auditor=200), expect(404, superuser=200)),
]

@pytest.fixture
def ctx(cast):
    own = cast.project.memberships.get(user=cast.annotator)
    foreign = cast.foreign_project.memberships.get(user=cast.foreign_manager)
    e_own = record_event("view", actor=cast.manager, project=cast.project)
    e_foreign = record_event("view", actor=cast.foreign_manager, project=cast.foreign_project)
    return {"m_own": own.pk, "m_foreign": foreign.pk, "e_own": e_own.pk, "e_foreign": e_foreign.pk,
            "dicom_own": _ingest_one(cast.project, 1) | _delivered_batch(cast.project),
            "dicom_foreign": _ingest_one(cast.foreign_project, 2) | _delivered_batch(cast.foreign_project)}


def _delivered_batch(project) -> dict:
    """A delivered batch with a stored report and one export file, and an empty open batch."""
    from core.dicom.storage import get_store
    from tasks.batches import create_batch, store_batch_report
    from tasks.models import Batch

    batch = create_batch(project, name="delivered", by=None)
    store_batch_report(batch.pk)
    stored = get_store().put_bytes(f"exports/matrix-{batch.pk}/findings.json", b"{}")
    Batch.objects.filter(pk=batch.pk).update(state=Batch.State.DELIVERED, export_state=Batch.ExportState.READY,
                                             exports=[{"name": "findings.json", "format": "json", "task": None,
                                                       "size": 2, "sha256": stored.sha256, "object": stored.name}])
    return {"batch": batch.pk, "empty_batch": create_batch(project, name="empty", by=None).pk}


def _ingest_one(project, seed) -> dict:
    """A small CT series in the project: one instance to read, one quarantined to clear; pseudonyms kept."""
    import io

    from core.dicom.ingest import IngestItem, ingest_files
    from core.dicom.models import Instance

    project.keep_pseudonym_map = True
    project.save()
    ds, held = synthetic.make_ct_series(n_slices=2, rows=8, cols=8, seed=seed)
    report = ingest_files(project, [IngestItem(str(i), reader=io.BytesIO(synthetic.to_bytes(d)))
                                    for i, d in enumerate((ds, held))], by=None, source="folder")
    f = report.files[0]
    instance = Instance.objects.get(sop_instance_uid=f.sop_instance_uid)
    quarantined = Instance.objects.get(sop_instance_uid=report.files[1].sop_instance_uid)
    Instance.objects.filter(pk=quarantined.pk).update(is_quarantined=True, quarantine_reason="test")
    # More studies: the reader holding a read of the first still has work to claim, and two
    # tasks carry adjudications (one open, one claimed by a radiologist).
    for extra_seed in (seed + 50, seed + 60, seed + 70):
        extra = synthetic.make_ct_series(n_slices=1, rows=8, cols=8, seed=extra_seed)[0]
        ingest_files(project, [IngestItem("y", reader=io.BytesIO(synthetic.to_bytes(extra)))], by=None,
                     source="folder")
    tasks = create_tasks(project, by=None)
    reader = project.memberships.filter(role="annotator", user__username="annotator").first()
    if reader is None:
        reader = grant_membership(project=project, user=UserFactory(organization=project.vendor), role="annotator")
    read = claim_next_read(reader.user).read
    gold = create_tasks(project, by=None, kind=Task.Kind.GOLD, studies=project.studies.order_by("id")[:1])[0]
    create_protocol_version(project=project, name="draft v2")  # unused, so still editable
    radiologist = project.memberships.filter(role="radiologist").first()
    if radiologist is None:
        radiologist = grant_membership(project=project, user=UserFactory(organization=project.vendor),
                                       role="radiologist")
    for task in tasks[2:4]:
        Task.objects.filter(pk=task.pk).update(state="awaiting_adjudication")
        Adjudication.objects.create(project=project, task=task, tier=2)
    held = claim_next_adjudication(radiologist.user)
    adj_instance = Instance.objects.filter(series__study=held.task.study).select_related("series__study").first()
    from learning.models import LearningJob

    job = LearningJob.objects.create(project=project, kind="train", state="succeeded")
    return {"learning_job": job.pk, "study": f.study_uid, "series": f.series_uid, "instance": f.sop_instance_uid,
            "instance_pk": quarantined.pk, "study_pk": instance.series.study_id, "orig_study": ds.StudyInstanceUID,
            "task": tasks[0].pk, "read": read.pk, "adjudication": held.pk, "gold_task": gold.pk,
            "adj_study": adj_instance.series.study.study_uid, "adj_series": adj_instance.series.series_uid,
            "adj_instance": adj_instance.sop_instance_uid}


class _Rollback(Exception):
    pass


@pytest.mark.django_db
@pytest.mark.parametrize("case", [pytest.param(c, id=f"{c.method}-{c.route}") for c in CASES])
def test_permission_matrix(cast, ctx, api, case):
    """Each role's request runs in a savepoint that is rolled back, so every row sees the same data."""
    wrong = []
    for own in (True, False) if case.foreign is not None else (True,):
        for role in ROLES:
            cache.clear()  # login throttling counts in the cache, which no rollback undoes
            client = api(cast.user(role))
            body = case.body(cast) if case.body else None
            try:
                with transaction.atomic():
                    path = case.path(cast, ctx, own)
                    if case.send is not None:
                        response = case.send(client, path, cast)
                    else:
                        response = getattr(client, case.method)(path, body, format="json")
                    raise _Rollback
            except _Rollback:
                pass
            expected = (case.own if own else case.foreign)[role]
            if response.status_code != expected:
                body = b"(streamed)" if response.streaming else response.content[:120]
                wrong.append(f"{role} on {'own' if own else 'foreign'}: expected {expected}, got "
                             f"{response.status_code} {body!r}")
    assert not wrong, "\n".join(wrong)


def _api_routes(resolver=None, prefix=""):
    """(route name, method) for every endpoint under /api/ and /dicomweb/."""
    resolver = resolver or get_resolver()
    for pattern in resolver.url_patterns:
        path = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            yield from _api_routes(pattern, path)
        elif isinstance(pattern, URLPattern) and path.startswith(("api/", "dicomweb/")) and pattern.name:
            if pattern.name in ("schema", "docs"):
                continue
            callback = pattern.callback
            actions = getattr(callback, "actions", None)
            if actions:
                methods = [m for m in actions if m not in ("head", "options")]
            else:
                cls = getattr(callback, "cls", None) or getattr(callback, "view_class", None)
                methods = [m for m in ("get", "post", "put", "patch", "delete") if hasattr(cls, m)]
            for method in methods:
                if method == "put" and "patch" in methods:  # full updates are covered by their PATCH twin
                    continue
                yield pattern.name, method


def test_every_api_endpoint_is_in_the_matrix():
    covered = {(c.route, c.method) for c in CASES}
    missing = sorted(set(_api_routes()) - covered)
    assert not missing, f"endpoints missing from the permission matrix: {missing}"
