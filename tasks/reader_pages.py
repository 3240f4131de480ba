"""The reader's pages (/work/; tasks.workstation has the rules): the worklist and a read's page,
OHIF beside a findings panel made from the protocol.

Session-authenticated at the dashboard's login (``/dashboard/login/``, throttled). The pages' own
scripts call the reading API with the session and Django's CSRF header: claim, heartbeat, release,
submit; the panel's answers go to ``answers/`` here, merged into the draft on the locked read. A
read's page is its reader's while the read is live (tasks.dicomweb_scopes.live_read_of), 404
otherwise, the same answer whichever it is; each page view is audited.
"""

from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_safe
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from audit.trail import record_event
from core.errors import NotFound
from tasks import ohif, workstation
from tasks.api import protocol_schema
from tasks.dicomweb_scopes import live_read_of


def _live_read(request, read_id: int):
    try:
        return live_read_of(request.user, read_id)
    except NotFound as refusal:
        record_event("view", actor=request.user, object_type="tasks.read_page", object_id=read_id, outcome="denied",
                     reason=str(refusal.detail)[:300])
        raise Http404(str(refusal.detail)) from None


@require_safe
@login_required(login_url="dashboard-login")
@ensure_csrf_cookie  # the page's scripts send it back as X-CSRFToken
def worklist(request):
    record_event("view", actor=request.user, object_type="tasks.worklist")
    return render(request, "tasks/work/worklist.html", {"projects": workstation.worklist(request.user)})


def read_context(read) -> dict:
    version = read.task.protocol_version
    fields = workstation.panel_fields(version)
    return {
        "read": read, "fields": fields, "answers": workstation.panel_answers(read.draft, fields),
        "saved": workstation.saved_objects(read.draft, version),
        "drawn": workstation.drawn_entries(version),
        "viewer_installed": ohif.dist_dir() is not None, "install_hint": ohif.install_hint(),
        "page": {"read": read.pk, "project": read.project_id, "lease_expires_at": read.lease_expires_at.isoformat(),
                 "protocol": protocol_schema(version)},
    }


@require_safe
@login_required(login_url="dashboard-login")
@ensure_csrf_cookie  # OHIF's save (STOW, tasks.ohif's CSRF guard) and the page's scripts send it back
def read_page(request, read: int):
    """The read's page; with ``?part=saved`` only the list of what the viewer saved (reloaded after saves)."""
    live = _live_read(request, read)
    context = read_context(live)
    if request.GET.get("part") == "saved":
        return render(request, "tasks/work/_saved.html", context)
    record_event("view", actor=request.user, project_id=live.project_id, object_type="tasks.read_page",
                 object_id=live.pk, study_uid=live.task.study.study_uid,
                 protocol_version=live.task.protocol_version.number, extra={"read": live.pk})
    return render(request, "tasks/work/read.html", context)


class AnswersSerializer(serializers.Serializer):
    answers = serializers.DictField(child=serializers.JSONField(allow_null=True))


class PanelAnswersView(APIView):
    """PUT the panel's answers ({label: value}) into the read's draft (tasks.workstation)."""

    schema = None  # the page's own endpoint, not part of the documented API

    def put(self, request, read: int):
        data = AnswersSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        saved = workstation.save_panel_answers(read, request.user, data.validated_data["answers"])
        return Response({"read": saved.pk, "draft": saved.draft})
