"""The OHIF viewer under /viewer/ (tasks.ohif has the rules): the build's files, its single-page
rewrite, and a read's viewer at /viewer/reads/{read}/ with the app-config.js made for it.

Files are streamed with FileResponse rather than WhiteNoise, which is in the stack: WhiteNoise
serves STATIC_ROOT from middleware and cannot give a read its own index.html, fall back to
index.html for the viewer's routes, or say the build is missing. In production nginx may serve
var/ohif/dist/ at /viewer/ itself, as long as /viewer/reads/ still reaches radqueue.

A read's pages and config are the read's reader's while the read is live (the session's user,
tasks.dicomweb_scopes.live_read_of), 404 otherwise, never cached, and each config served is audited.
"""

from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpResponse, HttpResponseNotModified
from django.shortcuts import redirect, render
from django.utils.http import http_date
from django.views.decorators.clickjacking import xframe_options_sameorigin
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_safe
from django.views.static import was_modified_since

from audit.trail import record_event
from core.dicom.dicomweb import public_url
from core.errors import NotFound
from tasks import ohif
from tasks.dicomweb_scopes import live_read_of


def _not_installed(request, **context):
    context.update(version=ohif.VERSION, folder=ohif.ohif_dir(), hint=ohif.install_hint())
    response = render(request, "tasks/viewer/not_installed.html", context, status=503)
    response["Cache-Control"] = ohif.NEVER_STORE
    return response


def _html(text: str, cache_control: str) -> HttpResponse:
    response = HttpResponse(text, content_type="text/html; charset=utf-8")
    response["Cache-Control"] = cache_control
    return response


@require_safe
@xframe_options_sameorigin  # radqueue's own read page may frame the viewer; no other site
def asset(request, path: str = ""):
    """A file of the build; a path that is not one (a viewer route) gets index.html."""
    dist = ohif.dist_dir()
    if dist is None:
        return _not_installed(request)
    found = ohif.find_asset(dist, path)
    if found is None:
        if "." in path.rsplit("/", 1)[-1]:
            raise Http404("No such file in the viewer's build.")  # a missing chunk is not a route
        try:
            return _html(ohif.index_html(dist), ohif.REVALIDATE)
        except ohif.BuildNotRebased:
            return _not_installed(request)
    stat = found.path.stat()
    if not was_modified_since(request.META.get("HTTP_IF_MODIFIED_SINCE"), int(stat.st_mtime)):
        return HttpResponseNotModified()
    response = FileResponse(found.path.open("rb"), content_type=found.content_type)
    response["Last-Modified"] = http_date(stat.st_mtime)
    response["Cache-Control"] = found.cache_control
    response["X-Content-Type-Options"] = "nosniff"
    return response


def _live_read(request, read_id: int, what: str):
    try:
        return live_read_of(request.user, read_id)
    except NotFound as refusal:
        record_event("view", actor=request.user, object_type=what, object_id=read_id, outcome="denied",
                     reason=str(refusal.detail)[:300])
        raise Http404(str(refusal.detail)) from None


@require_safe
@login_required(login_url="dashboard-login")
@xframe_options_sameorigin
@ensure_csrf_cookie  # the config's CSRF guard sends it with OHIF's saves (tasks.ohif.CSRF_GUARD)
def read_viewer(request, read: int, route: str = ""):
    """OHIF for one read: the bare prefix opens the task's study in the protocol's first mode."""
    live = _live_read(request, read, "tasks.viewer")
    dist = ohif.dist_dir()
    if dist is None:
        return _not_installed(request, read_id=live.pk,
                              dicomweb_root=public_url(request, f"/dicomweb/reads/{live.pk}"))
    if not route:
        mode = ohif.modes_for(live.task.protocol_version.entries.values_list("kind", flat=True))[0]
        response = redirect(ohif.open_url(live.pk, live.task.study.study_uid, mode))
        response["Cache-Control"] = ohif.NEVER_STORE
        return response
    try:
        html = ohif.index_html(dist, config_url=f"{ohif.read_prefix(live.pk)}app-config.js")
    except ohif.BuildNotRebased:
        return _not_installed(request, read_id=live.pk)
    return _html(html, ohif.NEVER_STORE)


@require_safe
def read_config(request, read: int):
    """The read's app-config.js. A script tag cannot follow a login redirect: anyone but the
    read's reader, signed in, gets 404."""
    if not request.user.is_authenticated:
        raise Http404("No such read.")
    live = _live_read(request, read, "tasks.viewer_config")
    task = live.task
    root = public_url(request, f"/dicomweb/reads/{live.pk}")
    config = ohif.app_config(read_id=live.pk, dicomweb_root=root, study_uid=task.study.study_uid,
                             modes=ohif.modes_for(task.protocol_version.entries.values_list("kind", flat=True)))
    record_event("view", actor=request.user, project_id=live.project_id, object_type="tasks.viewer_config",
                 object_id=live.pk, study_uid=task.study.study_uid, protocol_version=task.protocol_version.number,
                 extra={"read": live.pk})
    response = HttpResponse(ohif.app_config_js(config), content_type="text/javascript; charset=utf-8")
    response["Cache-Control"] = ohif.NEVER_STORE
    response["X-Content-Type-Options"] = "nosniff"
    return response
