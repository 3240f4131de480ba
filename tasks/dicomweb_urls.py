"""The reading queue's DICOMweb roots (tasks.dicomweb_scopes), mounted under /dicomweb/ beside the
project-wide one: the same views and URL shapes, each serving what its scope lets through."""

from django.urls import include, path

import core.url_ids  # noqa: F401 - registers <id:>, the bounded ids
from core.dicom.urls import dicomweb_patterns
from tasks.dicomweb_scopes import AdjudicationScope, ReadScope

urlpatterns = [
    path("reads/<id:read>/", include(dicomweb_patterns(ReadScope, name_prefix="read-"))),
    path("adjudications/<id:adjudication>/", include(dicomweb_patterns(AdjudicationScope,
                                                                       name_prefix="adjudication-"))),
]
