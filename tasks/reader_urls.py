"""The reader's pages, mounted at /work/ (tasks.reader_pages)."""

from django.urls import path

import core.url_ids  # noqa: F401 - registers <id:>, the bounded ids
from tasks import reader_pages

urlpatterns = [
    path("", reader_pages.worklist, name="worklist"),
    path("reads/<id:read>/", reader_pages.read_page, name="read-page"),
    path("reads/<id:read>/answers/", reader_pages.PanelAnswersView.as_view(), name="read-page-answers"),
]
