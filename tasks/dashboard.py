"""The dashboard pages (/dashboard/): server-rendered progress, throughput and concordance for the
members who may see a project's progress (managers, QA, clients), live through the feed.

Session-authenticated (``/dashboard/login/``, throttled like the token endpoint). Access follows
the API: a project the caller cannot see is 404, one they see without view_progress is 403. The
numbers come from tasks.progress.project_progress (the progress REST document, already shaped for
the caller's role) and tasks.reports.concordance_report (pseudonymous: only its per-class rows).
"""

from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.views import LoginView
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import render
from django.utils.dateparse import parse_date

from audit.trail import record_event
from core.auth import ThrottledLoginFormMixin
from core.errors import Forbidden, NotFound
from core.roles import Perm
from core.selectors import get_project_for, projects_visible_to
from tasks.progress import project_progress
from tasks.reports import concordance_report
from tasks.states import TaskState

CHART_DAYS = 14
CHART_WIDTH, CHART_HEIGHT, CHART_PAD = 560, 160, 24


class DashboardLoginForm(ThrottledLoginFormMixin, AuthenticationForm):
    """The dashboard's login form, throttled like the token endpoint and the admin."""

    login_channel = "dashboard"

    def throttled_message(self) -> str:
        return "Too many failed logins; try again later."


class DashboardLoginView(LoginView):
    template_name = "tasks/dashboard/login.html"
    authentication_form = DashboardLoginForm
    redirect_authenticated_user = True

    def get_default_redirect_url(self):
        return "/dashboard/"


def throughput_chart(days: list[dict]) -> dict:
    """Bar geometry for the inline SVG: reads per day over the last CHART_DAYS days with activity."""
    days = days[-CHART_DAYS:]
    peak = max((d["reads"] for d in days), default=0) or 1
    slot = (CHART_WIDTH - 2 * CHART_PAD) / CHART_DAYS  # fixed slots: one day is never a wall of blue
    plot = CHART_HEIGHT - 2 * CHART_PAD
    bars = []
    for i, day in enumerate(days):
        height = round(plot * day["reads"] / peak, 1)
        bars.append({"x": round(CHART_PAD + i * slot + slot * 0.1, 1), "width": round(slot * 0.8, 1),
                     "y": round(CHART_HEIGHT - CHART_PAD - height, 1), "height": height, "reads": day["reads"],
                     "label_y": round(CHART_HEIGHT - CHART_PAD - height - 4, 1),
                     "label": (parse_date(day["day"]) or day["day"]).strftime("%d %b") if day.get("day") else ""})
    return {"width": CHART_WIDTH, "height": CHART_HEIGHT, "baseline": CHART_HEIGHT - CHART_PAD,
            "label_y": CHART_HEIGHT - 6, "peak": peak if days else 0, "bars": bars}


def dashboard_context(project, user) -> dict:
    progress = project_progress(project, user=user)
    concordance = concordance_report(project, named=False)
    by_state = progress["tasks"]["by_state"]
    return {
        "project": project,
        "progress": progress,
        "states": [{"state": s.value, "label": s.label, "count": by_state.get(s.value, 0)} for s in TaskState],
        "chart": throughput_chart(progress["throughput"]["days"]),
        "concordance": concordance["rows"],
        "concordance_tasks": concordance["tasks"],
    }


def _project_or_refuse(request, project_pk):
    try:
        return get_project_for(request.user, project_pk, Perm.VIEW_PROGRESS)
    except (NotFound, Forbidden) as refusal:
        record_event("view", actor=request.user, project_id=project_pk, object_type="tasks.dashboard",
                     outcome="denied", reason=str(refusal.detail)[:300])
        if isinstance(refusal, NotFound):
            raise Http404("No such project.") from None
        raise PermissionDenied(str(refusal.detail)) from None


@login_required(login_url="dashboard-login")
def project_list(request):
    projects = projects_visible_to(request.user, Perm.VIEW_PROGRESS).order_by("name")
    return render(request, "tasks/dashboard/index.html", {"projects": projects})


@login_required(login_url="dashboard-login")
def project_dashboard(request, project_pk: int):
    """The page; with ``?part=numbers`` only its numbers (what the page's feed client reloads)."""
    project = _project_or_refuse(request, project_pk)
    record_event("view", actor=request.user, project=project, object_type="tasks.dashboard")
    part = "_numbers" if request.GET.get("part") == "numbers" else "project"
    return render(request, f"tasks/dashboard/{part}.html", dashboard_context(project, request.user))
