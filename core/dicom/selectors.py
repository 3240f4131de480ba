"""Which studies and instances a caller may reach through DICOMweb and the index API.

Managers and QA (view_reads) and ingesters see every study of their projects; readers see only
the studies of reads they hold (tasks.selectors, once the queue exists); clients, auditors and
privacy officers get no pixels. Quarantined instances (burned-in text risk) are served only to
those who can clear the quarantine.
"""

from typing import Protocol

from django.db.models import Q, QuerySet

from core.dicom.models import Instance, Series, Study
from core.roles import Perm
from core.selectors import projects_visible_to


def _full_access_project_ids(user) -> list[int]:
    ids = set(projects_visible_to(user, Perm.VIEW_READS).values_list("pk", flat=True))
    ids |= set(projects_visible_to(user, Perm.INGEST).values_list("pk", flat=True))
    return sorted(ids)


class HeldStudies(Protocol):
    """What the reading queue tells DICOMweb: the studies a person holds open work on, and the
    protocol version that work is under. core cannot import tasks, so tasks registers it at start-up."""

    def study_ids_held_by(self, user) -> QuerySet: ...

    def protocol_version_served(self, user, study_id: int) -> int | None: ...


_held: HeldStudies | None = None


def register_held_studies(provider: HeldStudies) -> None:
    global _held
    _held = provider


def _held_study_ids(user) -> QuerySet:
    if _held is None:
        return Study.objects.none().values("pk")
    return _held.study_ids_held_by(user)


def protocol_version_served(user, study: Study) -> int | None:
    """The protocol version of the read or adjudication the study is served to ``user`` under; None
    for project-wide access (managers, QA, ingest), which is under no one read."""
    if _held is None or not user.is_authenticated:
        return None
    return _held.protocol_version_served(user, study.pk)


def studies_visible_to(user) -> QuerySet[Study]:
    if not user.is_authenticated:
        return Study.objects.none()
    if user.is_superuser:
        return Study.objects.all()
    return Study.objects.filter(Q(project_id__in=_full_access_project_ids(user)) | Q(pk__in=_held_study_ids(user)))


def series_visible_to(user) -> QuerySet[Series]:
    return Series.objects.filter(study__in=studies_visible_to(user))


def instances_visible_to(user) -> QuerySet[Instance]:
    """Instances the user may retrieve: quarantined ones only for project managers."""
    qs = Instance.objects.filter(series__study__in=studies_visible_to(user))
    if user.is_superuser:
        return qs
    managed = projects_visible_to(user, Perm.MANAGE).values("pk")
    return qs.filter(Q(is_quarantined=False) | Q(project_id__in=managed))
