"""The DICOMweb roots the reading queue mounts: one per live read, one per claimed adjudication.

``/dicomweb/reads/{read}/`` serves the read's task study (only the task's series for a per-series
task) and the objects this read saved, nothing else: another study is not there (a prior-study
query answers an empty list), another reader's objects are not there, and nothing says whether the
task is gold or calibration (the same rules serve both). It lives while the read does: once the
lease lapses, the read is released or reassigned, or the reader's membership ends, every URL under
it answers 404.

``/dicomweb/adjudications/{adjudication}/`` serves the task's study with the current objects of its
submitted reads, each series described by the reader's pseudonym, while the adjudicator holds it.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import connection
from django.db.models import Q, QuerySet
from django.utils import timezone

from core.dicom.models import Instance, Series, Study
from core.dicom.scopes import Scope
from core.errors import DomainError, NotFound
from core.roles import Perm
from core.selectors import projects_visible_to
from tasks.models import Read, ReadObject
from tasks.selectors import claimed_adjudications_of, reader_membership_sql
from tasks.states import ReadState

NOT_LIVE = "No such read, or it is no longer live (submitted, released, reassigned or lapsed)."


@dataclass(frozen=True)
class _TaskOf:
    """The two task fields the shared scope rules read."""

    study_id: int
    series_id: int | None


def live_read_of(user, read_id):
    """The caller's read while it is live (claimed, lease running, a reader role held); else 404,
    the same answer whether the read ended, lapsed or was never theirs (existence does not leak)."""
    live = _live_read(user, read_id)
    return Read.objects.select_related("task__study", "task__series", "task__protocol_version").get(pk=live.pk)


def _live_read(user, read_id) -> _LiveRead:
    """The live-read rule as one static statement (_LIVE_READ); NotFound when the read is not live."""
    row = None
    if user.is_authenticated:
        with connection.cursor() as cursor:
            cursor.execute(_LIVE_READ, {"read": read_id, "reader": user.pk, "now": timezone.now()})
            row = cursor.fetchone()
    if row is None:
        raise NotFound(NOT_LIVE)
    return _LiveRead(*row)


class _TaskScope(Scope):
    """A task's study (its one series for a per-series task) plus some saved objects."""

    task = None

    def saved(self) -> QuerySet[ReadObject]:
        raise NotImplementedError

    def _originals(self) -> Q:
        own = Q(is_reader_object=False)
        return own & Q(series_id=self.task.series_id) if self.task.series_id else own

    def studies(self) -> QuerySet[Study]:
        return Study.objects.filter(pk=self.task.study_id)

    def series(self, study: Study) -> QuerySet[Series]:
        originals = Q(is_reader_object=False) & (Q(pk=self.task.series_id) if self.task.series_id else Q())
        saved = Q(pk__in=Instance.objects.filter(pk__in=self.saved().values("instance_id")).values("series_id"))
        return study.series.filter(originals | saved)

    def instances(self) -> QuerySet[Instance]:
        qs = Instance.objects.filter(series__study_id=self.task.study_id).filter(
            self._originals() | Q(pk__in=self.saved().values("instance_id")))
        if self.user.is_superuser:
            return qs
        # The project-wide rule (core.dicom.selectors): burned-in-text risks only to those who may clear them.
        return qs.filter(Q(is_quarantined=False)
                         | Q(project_id__in=projects_visible_to(self.user, Perm.MANAGE).values("pk")))

    def audit_study(self, instance: Instance) -> Study | None:
        return None  # the protocol version is the task's, whatever the study

    def protocol_version(self, study: Study) -> int | None:
        return self.task.protocol_version.number


def _stow_answer(description: str) -> dict:
    return {"description": description, "content": {"application/dicom+json": {"schema": {"type": "object"}}}}


@dataclass(frozen=True)
class _LiveRead:
    """What a read's root needs of its read, task and protocol version (one row)."""

    pk: int
    project_id: int
    study_id: int
    study_uid: str
    series_id: int | None
    protocol_number: int


# The live-read rule (live_read_of, every read root), as one static statement: a root runs it on every
# request (a viewer asks for each frame on its own), where the ORM's building of the same query
# cost more than a frame's whole read from the store.
_LIVE_READ = f"""
SELECT r.id, r.project_id, t.study_id, st.study_uid, t.series_id, pv.number
  FROM tasks_read r
  JOIN tasks_task t ON t.id = r.task_id
  JOIN core_study st ON st.id = t.study_id
  JOIN core_protocolversion pv ON pv.id = t.protocol_version_id
 WHERE r.id = %(read)s AND r.reader_id = %(reader)s AND r.state = '{ReadState.CLAIMED.value}'
   AND r.lease_expires_at > %(now)s AND {reader_membership_sql("r")}
"""

# One instance of a read's root by its UIDs: the task's originals (its one series for a per-series
# task) or an object this read saved and has not superseded; with its recorded frame layout
# (core.dicom.metadata), so a frame request makes no other query before reading the store.
_INSTANCE_AT = """
SELECT i.*, m.frame_layout AS recorded_frame_layout
  FROM core_instance i JOIN core_series s ON s.id = i.series_id
  LEFT JOIN core_instancemetadata m ON m.instance_id = i.id
 WHERE s.study_id = %(study)s AND s.series_uid = %(series_uid)s AND i.sop_instance_uid = %(sop_uid)s
   AND ((NOT i.is_reader_object AND (%(task_series)s::bigint IS NULL OR i.series_id = %(task_series)s::bigint))
        OR i.id IN (SELECT o.instance_id FROM tasks_readobject o
                     WHERE o.read_id = %(read)s AND o.superseded_at IS NULL))
"""


class ReadScope(_TaskScope):
    url_kwargs = ("read",)
    operation_prefix = "read"
    schema_note = ("Under a read's own root (the claim's `dicomweb.root`): the read's study and the objects this read "
                   "saved, only to its reader, only while the read is live (404 otherwise).")
    stow_summary = "STOW-RS: save a DICOM SEG or a TID 1500 SR into the read (its draft's findings)"
    stow_responses = {
        "200": _stow_answer("Stored: ReferencedSOPSequence lists each object and its RetrieveURL; the draft's "
                             "findings from the read's earlier object of the same kind are replaced."),
        "400": _stow_answer("Not a SEG or SR, another study, a reference outside the read's series, or findings "
                             "the submit would refuse: FailedSOPSequence, the reason in (0009,1001); nothing stored."),
        "409": _stow_answer("The lease was lost to another reader, or the object's SOP Instance UID is stored."),
        "422": _stow_answer("A segment or measurement maps to no label of the protocol (the reason lists those "
                             "allowed), or a fractional SEG: nothing stored."),
    }

    def __init__(self, user, *, read):
        super().__init__(user)
        self.read = _live_read(user, read)
        self.project_id, self.root_path = self.read.project_id, f"/dicomweb/reads/{self.read.pk}"
        self.task = _TaskOf(study_id=self.read.study_id, series_id=self.read.series_id)

    def studies(self) -> QuerySet[Study]:
        return Study.objects.filter(pk=self.read.study_id)

    def saved(self) -> QuerySet[ReadObject]:
        return ReadObject.objects.filter(read_id=self.read.pk, superseded_at__isnull=True)

    def instance_at(self, study_uid: str, series_uid: str, sop_uid: str) -> Instance | None:
        if study_uid != self.read.study_uid:
            return None
        found = list(Instance.objects.raw(_INSTANCE_AT, {
            "study": self.read.study_id, "series_uid": series_uid, "sop_uid": sop_uid,
            "task_series": self.read.series_id, "read": self.read.pk}))
        if not found or (found[0].is_quarantined and not self._clears_quarantine()):
            return None
        return found[0]

    def _clears_quarantine(self) -> bool:
        # The project-wide rule (core.dicom.selectors): burned-in-text risks only to those who may clear them.
        return self.user.is_superuser or projects_visible_to(self.user, Perm.MANAGE).filter(pk=self.project_id).exists()

    def protocol_version(self, study: Study | None) -> int | None:
        return self.read.protocol_number

    def audit_extra(self) -> dict:
        return {"read": self.read.pk}

    def store(self, view, request, study_uid):
        from tasks.read_objects import store_into_read

        view.audit_verb = "update"
        return store_into_read(live_read_of(self.user, self.read.pk), request, study_uid)


class AdjudicationScope(_TaskScope):
    url_kwargs = ("adjudication",)
    operation_prefix = "adjudication"
    schema_note = ("Under a held adjudication's root: the task's study with each submitted read's saved objects, "
                   "their series described by the reader's pseudonym; only to the adjudicator holding it.")
    stow_summary = "STOW-RS: refused (405); an adjudication's root stores nothing"
    stow_responses = {"405": {"description": "An adjudication's root stores nothing."}}

    def __init__(self, user, *, adjudication):
        super().__init__(user)
        self.adjudication = (claimed_adjudications_of(user).filter(pk=adjudication)
                             .select_related("task__study", "task__series", "task__protocol_version").first())
        if self.adjudication is None:
            raise NotFound("No such adjudication, or you do not hold it.")
        self.task, self.project_id = self.adjudication.task, self.adjudication.task.project_id
        self.root_path = f"/dicomweb/adjudications/{self.adjudication.pk}"
        self._readers = None

    def saved(self) -> QuerySet[ReadObject]:
        return ReadObject.objects.filter(read__task=self.task, read__state=ReadState.SUBMITTED,
                                         superseded_at__isnull=True)

    def audit_extra(self) -> dict:
        return {"adjudication": self.adjudication.pk}

    def store(self, view, request, study_uid):
        raise DomainError("An adjudication's DICOMweb root serves the reads' objects and stores none; resolve "
                          "it through /api/adjudications/{id}/resolve/.", code="method_not_allowed", status=405)

    describes_series = True

    def series_description(self, series: Series) -> str | None:
        if not series.is_reader_object:
            return None
        if self._readers is None:
            self._readers = dict(self.saved().values_list("instance__series_id", "read__reader__pseudonym"))
        pseudonym = self._readers.get(series.pk)
        return f"{pseudonym}: {series.description}".strip(": ") if pseudonym else None
