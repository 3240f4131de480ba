"""Reads and tasks a caller may see. Readers see only their own reads (blinding): never another
reader's read of the same task, nor how many there are."""

from django.db.models import QuerySet

from core.dicom.models import Study
from core.roles import Perm
from core.selectors import projects_visible_to
from tasks.models import Read, Task
from tasks.states import ReadState


def study_ids_held_by(user) -> QuerySet:
    """Studies of the reads the user holds open (what DICOMweb lets a reader retrieve)."""
    return Study.objects.filter(tasks__reads__reader=user, tasks__reads__state=ReadState.CLAIMED).values("pk")


def tasks_for_managers(user, project) -> QuerySet[Task]:
    return Task.objects.filter(project=project).select_related("study", "series", "protocol_version")


def reads_visible_to(user) -> QuerySet[Read]:
    """Own reads; plus, on projects where the user may see reads (managers, QA), submitted ones and
    (managers) open ones with their holders."""
    managed = projects_visible_to(user, Perm.MANAGE).values("pk")
    reviewed = projects_visible_to(user, Perm.VIEW_READS).values("pk")
    own = Read.objects.filter(reader=user)
    return (own | Read.objects.filter(project_id__in=managed)
            | Read.objects.filter(project_id__in=reviewed, state=ReadState.SUBMITTED)).distinct()
