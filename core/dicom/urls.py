from django.urls import path

from core.dicom import dicomweb as v

S, SE, IN = "studies/<str:study>", "series/<str:series>", "instances/<str:instance>"

urlpatterns = [
    path("studies", v.StudiesView.as_view(), name="qido-studies"),
    path(f"{S}", v.StudyRetrieveView.as_view(), name="wado-study"),
    path(f"{S}/metadata", v.StudyMetadataView.as_view(), name="wado-study-metadata"),
    path(f"{S}/thumbnail", v.StudyThumbnailView.as_view(), name="wado-study-thumbnail"),
    path(f"{S}/series", v.SeriesSearchView.as_view(), name="qido-series"),
    path(f"{S}/{SE}", v.SeriesRetrieveView.as_view(), name="wado-series"),
    path(f"{S}/{SE}/metadata", v.SeriesMetadataView.as_view(), name="wado-series-metadata"),
    path(f"{S}/{SE}/thumbnail", v.SeriesThumbnailView.as_view(), name="wado-series-thumbnail"),
    path(f"{S}/{SE}/instances", v.InstanceSearchView.as_view(), name="qido-instances"),
    path(f"{S}/{SE}/{IN}", v.InstanceRetrieveView.as_view(), name="wado-instance"),
    path(f"{S}/{SE}/{IN}/metadata", v.InstanceMetadataView.as_view(), name="wado-instance-metadata"),
    path(f"{S}/{SE}/{IN}/frames/<str:frames>", v.FramesView.as_view(), name="wado-frames"),
    path(f"{S}/{SE}/{IN}/bulk/<str:tag>", v.BulkDataView.as_view(), name="wado-bulk"),
    path(f"{S}/{SE}/{IN}/rendered", v.RenderedView.as_view(), name="wado-rendered"),
    path(f"{S}/{SE}/{IN}/thumbnail", v.ThumbnailView.as_view(), name="wado-thumbnail"),
]
