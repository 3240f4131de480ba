"""Saving a viewer's objects into a read: STOW-RS of a DICOM SEG or SR to the read's DICOMweb root.

Each object is checked before anything is stored: it must be of the read's own study (and series,
for a per-series task), every instance it references one the read is served; its segments and
measurements become findings of the read's protocol (tasks.findings.from_dicom), validated as a
submit validates them. Then, in one transaction on the locked read, each is stored encrypted
(core.dicom.reader_objects), supersedes the read's current object of its kind (kept, no longer
served) and its findings replace that object's in the draft; the draft's other findings
(classifications, grades, anything sent as JSON) stay. A submit without findings submits the draft.
A refused object stores nothing, nor does any other object of the same request.
"""

from __future__ import annotations

from django.db import transaction
from django.http import JsonResponse
from django.utils import timezone

from audit.trail import record_event
from core.dicom.dicomweb import DICOM_JSON, public_url, stow_attr, stow_parts
from core.dicom.reader_objects import kind_of, made_safe, parse_object, store_reader_object
from core.errors import DomainError
from tasks.findings.from_dicom import ObjectRefused, findings_from_object
from tasks.findings.loading import labels_of, study_geometry, validate_for_task
from tasks.models import Read, ReadObject
from tasks.reads import draft_findings, get_workable_read_for_update

FAILURE_PROCESSING = 0x0110  # PS3.18 / PS3.4 "Processing failure"
FAILURE_NOT_SUPPORTED = 0x0122  # "SOP Class not supported"


def _failure(status: int, ds, message: str) -> JsonResponse:
    """The PS3.18 answer to a refused save: nothing stored, the reason in FailedSOPSequence."""
    code = FAILURE_NOT_SUPPORTED if status == 400 and ds is not None and kind_of(ds) is None else FAILURE_PROCESSING
    failed = {"00081197": stow_attr("US", code), "00090010": stow_attr("LO", "RADQUEUE"),
              "00091001": stow_attr("LT", message)}
    if ds is not None:
        failed = {"00081150": stow_attr("UI", str(ds.get("SOPClassUID", ""))),
                  "00081155": stow_attr("UI", str(ds.get("SOPInstanceUID", ""))), **failed}
    body = {"00081199": {"vr": "SQ"}, "00081198": {"vr": "SQ", "Value": [failed]}}
    return JsonResponse(body, status=status, content_type=DICOM_JSON)


def _checked(read: Read, ds, study_uid: str | None) -> list:
    """The object's findings, checked; ObjectRefused or DomainError saying why not."""
    task = read.task
    if study_uid and study_uid != task.study.study_uid:  # the URL's study; the object's is from_dicom's check
        raise ObjectRefused(f"the URL names study {study_uid}, not this read's study {task.study.study_uid}",
                            status=400, code="wrong_study")
    # The SOP class, the object's study and every reference it makes are checked there.
    converted = findings_from_object(ds, labels=labels_of(task.protocol_version_id), study=study_geometry(task.study),
                                     task_series_uid=task.series.series_uid if task.series_id else None)
    findings = list(converted.findings)
    validate_for_task(task, findings)  # 400 naming each bad field, as a submit of the same findings would
    return findings


def store_into_read(read: Read, request, study_uid: str | None):
    """STOW-RS into ``read`` (its DICOMweb root): every part stored and merged into the draft, or none."""
    parts = stow_parts(request)
    if not parts:
        raise DomainError("The STOW-RS body has no parts.", code="bad_stow_request")
    checked = []
    for n, part in enumerate(parts, start=1):
        name = f"part {n}"
        if part.spool is None:
            return _failure(413 if "large" in part.reason else 400, None, f"{name}: {part.reason}")
        with part.spool.reader() as reader:
            data = reader.read()
        try:
            ds = parse_object(data, name)
        except DomainError as exc:
            return _failure(400, None, exc.detail)
        try:
            checked.append((ds, kind_of(ds), _checked(read, ds, study_uid)))
        except ObjectRefused as exc:
            return _failure(exc.status, ds, f"{name}: {exc.message}")
        except DomainError as exc:  # the findings failed the submit's checks: each bad field named
            named = "; ".join(f"{path}: {' '.join(msgs)}" for path, msgs in list(exc.errors.items())[:5])
            return _failure(getattr(exc, "status_code", 400), ds, f"{name}: {exc.detail} {named}".strip())
    if len({kind for _, kind, _ in checked}) < len(checked):
        return _failure(400, checked[0][0], "Save one SEG and at most one SR per request: a later object of "
                                            "a kind replaces the earlier one's findings.")
    with transaction.atomic():
        locked = get_workable_read_for_update(read.pk, request.user)
        study, now = locked.task.study, timezone.now()
        findings = draft_findings(locked.draft)
        stored = []
        for ds, kind, new in checked:
            instance = store_reader_object(study, made_safe(ds, study, author=request.user.pseudonym))
            previous = (ReadObject.objects.select_for_update()
                        .filter(read=locked, kind=kind, superseded_at__isnull=True).first())
            if previous is not None:
                ReadObject.objects.filter(pk=previous.pk).update(superseded_at=now)
                findings = [f for f in findings if f not in previous.findings]
            ReadObject.objects.create(read=locked, instance=instance, kind=kind, findings=new)
            findings = findings + new
            stored.append((ds, instance, previous))
        draft = {**locked.draft, "findings": findings} if isinstance(locked.draft, dict) else findings
        Read.objects.filter(pk=locked.pk).update(draft=draft)
        for ds, _, previous in stored:
            record_event("update", actor=request.user, project_id=locked.project_id, obj=locked,
                         study_uid=study.study_uid,
                         extra={"draft": True, "saved_object": ds.SOPInstanceUID, "kind": kind_of(ds),
                                "supersedes": previous.instance.sop_instance_uid if previous else None,
                                "findings": len(draft_findings(draft))})
    root = public_url(request, f"/dicomweb/reads/{read.pk}")
    referenced = [{"00081150": stow_attr("UI", instance.sop_class_uid),
                   "00081155": stow_attr("UI", instance.sop_instance_uid),
                   "00081190": stow_attr("UR", f"{root}/studies/{study.study_uid}/series/"
                                               f"{instance.series.series_uid}/instances/{instance.sop_instance_uid}")}
                  for _, instance, _ in stored]
    body = {"00081190": stow_attr("UR", f"{root}/studies/{study.study_uid}"),
            "00081199": {"vr": "SQ", "Value": referenced}}
    return JsonResponse(body, status=200, content_type=DICOM_JSON)
