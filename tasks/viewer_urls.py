"""The OHIF viewer, mounted at /viewer/ (tasks.viewer): a read's viewer first, then the build."""

from django.urls import path, re_path

import core.url_ids  # noqa: F401 - registers <id:>, the bounded ids
from tasks import viewer

urlpatterns = [
    path("reads/<id:read>/app-config.js", viewer.read_config, name="viewer-read-config"),
    path("reads/<id:read>/", viewer.read_viewer, name="viewer-read"),
    path("reads/<id:read>/<path:route>", viewer.read_viewer, name="viewer-read-route"),
    re_path(r"^(?P<path>.*)$", viewer.asset, name="viewer-asset"),
]
