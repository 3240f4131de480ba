"""Which studies and instances a caller may reach through DICOMweb and the index API.

Managers and QA (view_reads) and ingesters see every study of their projects; readers see only
the studies of reads they hold (tasks.selectors, once the queue exists); clients, auditors and
privacy officers get no pixels. Quarantined instances (burned-in text risk) are served only to
those who can clear the quarantine.
"""

from django.db.models import Q, QuerySet

from core.dicom.models import Instance, Series, Study
from core.roles import Perm
from core.selectors import projects_visible_to


def _full_access_project_ids(user) -> list[int]:
    ids = set(projects_visible_to(user, Perm.VIEW_READS).values_list("pk", flat=True))
    ids |= set(projects_visible_to(user, Perm.INGEST).values_list("pk", flat=True))
    return sorted(ids)


def _held_study_ids(user) -> QuerySet:
    """Studies of the reads the user holds open; the reading queue (tasks app) provides them."""
    try:
        from tasks.selectors import study_ids_held_by
    except ImportError:
        return Study.objects.none().values("pk")
    return study_ids_held_by(user)


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
