from django.contrib.auth.views import LogoutView
from django.urls import path

import core.url_ids  # noqa: F401 - registers <id:>, the bounded ids
from tasks import dashboard

urlpatterns = [
    path("", dashboard.project_list, name="dashboard"),
    path("login/", dashboard.DashboardLoginView.as_view(), name="dashboard-login"),
    path("logout/", LogoutView.as_view(next_page="dashboard-login"), name="dashboard-logout"),
    path("projects/<id:project_pk>/", dashboard.project_dashboard, name="project-dashboard"),
]
