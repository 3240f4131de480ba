from django.urls import path

import core.url_ids  # noqa: F401 - registers <id:>, the bounded ids
from learning import api

urlpatterns = [
    path("projects/<id:project_pk>/models/", api.ModelVersionListView.as_view(), name="model-version-list"),
    path("projects/<id:project_pk>/learning/", api.LearningConfigView.as_view(), name="learning-config"),
    path("projects/<id:project_pk>/learning/jobs/", api.LearningJobListView.as_view(), name="learning-job-list"),
    path("projects/<id:project_pk>/learning/jobs/<id:pk>/", api.LearningJobDetailView.as_view(),
         name="learning-job-detail"),
]
