"""What one DICOMweb root serves: the studies, series and instances behind its URLs.

Every DICOMweb view asks its scope, never the selectors directly, so one set of views serves both
the project-wide root (``/dicomweb/``: managers, QA, ingesters, and readers for the studies they
hold) and the roots the reading queue mounts for one read or one adjudication (tasks.dicomweb_scopes).
A scope is built once the caller is authenticated; one that does not exist for the caller (a read
that is not theirs, or no longer live) raises NotFound before anything is looked up.
"""

from __future__ import annotations

from django.db.models import QuerySet

from core.dicom import selectors
from core.dicom.models import Instance, Series, Study


class Scope:
    """The project-wide root. Subclasses name the URL kwargs they are built from in ``url_kwargs``
    (taken out before the handlers see theirs) and prefix their operation ids in the OpenAPI schema."""

    url_kwargs: tuple[str, ...] = ()
    root_path = "/dicomweb"  # where this root's URLs start (the URLs in its bodies too)
    operation_prefix = ""
    #: None: STOW-RS here is ingest (a manager's permission); else a callable (view, request,
    #: study_uid) -> HttpResponse that stores into this scope.
    store = None
    schema_note = ""  # what the OpenAPI schema says of this root's operations
    stow_summary = ""
    stow_responses: dict = {}

    def __init__(self, user, **kwargs):
        self.user = user

    def studies(self) -> QuerySet[Study]:
        return selectors.studies_visible_to(self.user)

    def series(self, study: Study) -> QuerySet[Series]:
        # What readers saved is theirs and their adjudicator's (served by those scopes), never the project's.
        return study.series.filter(is_reader_object=False)

    def instances(self) -> QuerySet[Instance]:
        return selectors.instances_visible_to(self.user).filter(is_reader_object=False)

    def instance_at(self, study_uid: str, series_uid: str, sop_uid: str) -> Instance | None:
        return self.instances().select_related("series__study").filter(
            series__study__study_uid=study_uid, series__series_uid=series_uid, sop_instance_uid=sop_uid).first()

    def audit_study(self, instance: Instance) -> Study | None:
        """The study an instance_at lookup is audited under (its protocol version, where a read serves it)."""
        return instance.series.study

    def protocol_version(self, study: Study | None) -> int | None:
        return None if study is None else selectors.protocol_version_served(self.user, study)

    def audit_extra(self) -> dict:
        """What the audit event of each request adds to who and which study (the read, say)."""
        return {}

    describes_series = False  # whether series_description ever differs from the stored description

    def series_description(self, series: Series) -> str | None:
        """The SeriesDescription this root shows for ``series``, where it differs from the stored one."""
        return None
