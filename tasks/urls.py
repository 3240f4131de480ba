from django.urls import path

from tasks import api, progress_api

read_action = {name: api.ReadViewSet.as_view({"post": name}) for name in ("heartbeat", "release", "submit")}

urlpatterns = [
    path("queue/next/", api.QueueNextView.as_view(), name="queue-next"),
    path("reads/", api.ReadViewSet.as_view({"get": "list"}), name="read-list"),
    path("reads/<int:pk>/", api.ReadViewSet.as_view({"get": "retrieve"}), name="read-detail"),
    path("reads/<int:pk>/heartbeat/", read_action["heartbeat"], name="read-heartbeat"),
    path("reads/<int:pk>/release/", read_action["release"], name="read-release"),
    path("reads/<int:pk>/submit/", read_action["submit"], name="read-submit"),
    path("reads/<int:pk>/draft/", api.ReadViewSet.as_view({"put": "draft"}), name="read-draft"),
    path("projects/<int:project_pk>/tasks/", api.ProjectTaskViewSet.as_view({"get": "list"}), name="task-list"),
    path("projects/<int:project_pk>/tasks/create/", api.ProjectTaskViewSet.as_view({"post": "create_tasks"}),
         name="task-create"),
    path("projects/<int:project_pk>/tasks/<int:pk>/", api.ProjectTaskViewSet.as_view({"get": "retrieve"}),
         name="task-detail"),
    path("projects/<int:project_pk>/tasks/<int:pk>/cancel/", api.ProjectTaskViewSet.as_view({"post": "cancel"}),
         name="task-cancel"),
    path("projects/<int:project_pk>/reads/<int:pk>/reassign/", api.ReassignReadView.as_view(), name="read-reassign"),
    path("projects/<int:project_pk>/tasks/<int:pk>/reference/", api.ReferenceView.as_view(), name="task-reference"),
    path("projects/<int:project_pk>/workforce/", api.WorkforceView.as_view(), name="workforce"),
    path("projects/<int:project_pk>/reports/concordance/", api.ConcordanceView.as_view(), name="concordance-report"),
    path("projects/<int:project_pk>/progress/", progress_api.ProjectProgressView.as_view(), name="project-progress"),
    path("adjudications/next/", api.AdjudicationNextView.as_view(), name="adjudication-next"),
    path("adjudications/<int:pk>/", api.AdjudicationViewSet.as_view({"get": "retrieve"}), name="adjudication-detail"),
    path("adjudications/<int:pk>/resolve/", api.AdjudicationViewSet.as_view({"post": "resolve"}),
         name="adjudication-resolve"),
    path("adjudications/<int:pk>/release/", api.AdjudicationViewSet.as_view({"post": "release"}),
         name="adjudication-release"),
    path("projects/<int:project_pk>/adjudications/", api.ProjectAdjudicationListView.as_view(),
         name="project-adjudication-list"),
]
