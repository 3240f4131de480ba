from django.urls import path

from learning import api

urlpatterns = [
    path("projects/<int:project_pk>/models/", api.ModelVersionListView.as_view(), name="model-version-list"),
    path("projects/<int:project_pk>/learning/", api.LearningConfigView.as_view(), name="learning-config"),
    path("projects/<int:project_pk>/learning/jobs/", api.LearningJobListView.as_view(), name="learning-job-list"),
    path("projects/<int:project_pk>/learning/jobs/<int:pk>/", api.LearningJobDetailView.as_view(),
         name="learning-job-detail"),
]
