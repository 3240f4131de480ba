from django.urls import path

from core.dicom import dicomweb as v
from core.dicom.scopes import Scope

S, SE, IN = "studies/<str:study>", "series/<str:series>", "instances/<str:instance>"

ROUTES = [
    ("studies", v.StudiesView, "qido-studies"),
    (f"{S}", v.StudyRetrieveView, "wado-study"),
    (f"{S}/metadata", v.StudyMetadataView, "wado-study-metadata"),
    (f"{S}/thumbnail", v.StudyThumbnailView, "wado-study-thumbnail"),
    (f"{S}/series", v.SeriesSearchView, "qido-series"),
    (f"{S}/{SE}", v.SeriesRetrieveView, "wado-series"),
    (f"{S}/{SE}/metadata", v.SeriesMetadataView, "wado-series-metadata"),
    (f"{S}/{SE}/thumbnail", v.SeriesThumbnailView, "wado-series-thumbnail"),
    (f"{S}/{SE}/instances", v.InstanceSearchView, "qido-instances"),
    (f"{S}/{SE}/{IN}", v.InstanceRetrieveView, "wado-instance"),
    (f"{S}/{SE}/{IN}/metadata", v.InstanceMetadataView, "wado-instance-metadata"),
    (f"{S}/{SE}/{IN}/frames/<str:frames>", v.FramesView, "wado-frames"),
    (f"{S}/{SE}/{IN}/bulk/<str:tag>", v.BulkDataView, "wado-bulk"),
    (f"{S}/{SE}/{IN}/rendered", v.RenderedView, "wado-rendered"),
    (f"{S}/{SE}/{IN}/thumbnail", v.ThumbnailView, "wado-thumbnail"),
]


def dicomweb_patterns(scope_class: type[Scope] = Scope, *, name_prefix: str = "") -> list:
    """The DICOMweb URLs of one root, every view serving what ``scope_class`` lets through: the
    project-wide root here, a read's or an adjudication's where the queue mounts them."""
    return [path(route, view.as_view(scope_class=scope_class), name=f"{name_prefix}{name}")
            for route, view, name in ROUTES]


urlpatterns = dicomweb_patterns()
