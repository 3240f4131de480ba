"""OHIF served by radqueue at /viewer/ (tasks.viewer, tasks.ohif): the build's files with their
cache rules and the single-page rewrite, a read's viewer and the app-config.js made for it (its
reader's alone, while the read is live), the page that says the viewer is not installed, and the
stock @ohif/app build rendering a claimed CT in a real headless Chromium."""

import io
import json
import os
import shutil
from pathlib import Path

import pytest
from django.test import Client
from django.utils.http import http_date
from PIL import Image

from audit.models import AuditEvent
from core.models import LabelEntry
from tasks import ohif
from tasks.reads import release_read

NEXT = "/api/queue/next/"
HASHED = "app.bundle.0f6159c501addfe9.js"
INDEX = ('<!doctype html><html><head><script src="/viewer/app-config.js"></script>'
         f'<script defer src="/viewer/{HASHED}"></script></head><body><div id="root"></div></body></html>')


def _claim(client) -> dict:
    response = client.post(NEXT, {}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def _session(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _config(response) -> dict:
    text = response.content.decode()
    _, _, config = text.partition("\nwindow.config = ")  # after the CSRF guard (tasks.ohif.CSRF_GUARD)
    assert config and text.rstrip().endswith(";")
    return json.loads(config.rstrip().rstrip(";"))


@pytest.fixture
def fake_dist(settings, tmp_path):
    """A tiny build laid out as deploy/fetch_ohif.sh leaves one (rebased to /viewer/)."""
    dist = tmp_path / "ohif" / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text(INDEX)
    (dist / HASHED).write_text("console.log('ohif');")
    (dist / "0ddf166f7a343eda.wasm").write_bytes(b"\0asm\1\0\0\0")
    (dist / "app-config.js").write_text("window.config = {};")
    (dist / "assets" / "favicon.ico").write_bytes(b"\0\0\1\0")
    (tmp_path / "secret.txt").write_text("outside the build")
    settings.OHIF_DIR = str(tmp_path / "ohif")
    return dist


@pytest.mark.django_db
def test_a_reads_config_points_ohif_at_the_reads_own_dicomweb_root(cast, api, queued):
    body = _claim(api(cast.annotator))
    response = _session(cast.annotator).get(f"/viewer/reads/{body['read']}/app-config.js")

    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "text/javascript; charset=utf-8"
    assert response["Cache-Control"] == "no-store"
    config = _config(response)
    source = config["dataSources"][0]
    assert config["defaultDataSourceName"] == source["sourceName"] == "radqueue" and len(config["dataSources"]) == 1
    assert source["namespace"] == "@ohif/extension-default.dataSourcesModule.dicomweb"
    roots = {k: source["configuration"][k] for k in ("wadoRoot", "qidoRoot", "wadoUriRoot", "stowRoot")}
    assert set(roots.values()) == {body["dicomweb"]["root"]} == {f"http://testserver/dicomweb/reads/{body['read']}"}
    assert source["configuration"]["omitQuotationForMultipartRequest"] is True
    assert source["configuration"]["dicomUploadEnabled"] is False
    assert source["configuration"]["supportsFuzzyMatching"] is True and source["configuration"]["supportsWildcard"]
    assert config["investigationalUseDialog"] == {"option": "never"} and config["showStudyList"] is False
    assert config["routerBasename"] == f"/viewer/reads/{body['read']}"
    # generic_findings has masks and measurement-type labels: the measurement mode first, segmentation too
    assert config["radqueue"] == {"read": body["read"], "study": body["study_uid"], "modes": ["viewer", "segmentation"]}
    # no credential in the config: the session cookie does it; the CSRF guard before it names the
    # cookie and header it copies between, never a value
    guard, _, config_text = response.content.decode().partition("\nwindow.config = ")
    assert "token" not in config_text.lower()
    assert "token" not in guard.lower().replace('"csrftoken"', "").replace('"x-csrftoken"', "")
    event = AuditEvent.objects.filter(object_type="tasks.viewer_config", outcome="allowed").get()
    assert (event.actor_id, event.object_id, event.study_uid) == (cast.annotator.pk, str(body["read"]),
                                                                   body["study_uid"])
    assert event.extra["read"] == body["read"]


@pytest.mark.django_db
def test_a_reads_config_and_pages_are_404_to_anyone_else_and_once_the_read_ends(cast, api, queued, fake_dist):
    body = _claim(api(cast.annotator))
    config, page = f"/viewer/reads/{body['read']}/app-config.js", f"/viewer/reads/{body['read']}/viewer"
    for user in (cast.second_annotator, cast.manager, cast.outsider):
        assert _session(user).get(config).status_code == 404
        assert _session(user).get(page).status_code == 404
    assert Client().get(config).status_code == 404  # a script tag cannot follow a login redirect
    assert "/dashboard/login/" in Client().get(page)["Location"]
    assert AuditEvent.objects.filter(object_type="tasks.viewer_config", outcome="denied").count() == 3

    reader = _session(cast.annotator)
    assert reader.get(config).status_code == 200 and reader.get(page).status_code == 200
    release_read(body["read"], cast.annotator)
    assert reader.get(config).status_code == 404 and reader.get(page).status_code == 404


@pytest.mark.parametrize("kinds, modes", [
    ({"mask"}, ["segmentation"]),
    ({"measurement", "classification"}, ["viewer"]),
    ({"bbox"}, ["viewer"]), ({"polygon"}, ["viewer"]), ({"landmark"}, ["viewer"]),
    ({"mask", "landmark", "ordinal"}, ["viewer", "segmentation"]),
    ({"classification", "ordinal"}, ["viewer"]),
])
def test_the_modes_follow_the_protocols_label_kinds(kinds, modes):
    assert ohif.modes_for(kinds) == modes


@pytest.mark.django_db
def test_the_read_prefix_opens_the_study_in_the_protocols_first_mode(cast, api, queued, fake_dist):
    body = _claim(api(cast.annotator))
    reader = _session(cast.annotator)
    response = reader.get(f"/viewer/reads/{body['read']}/")
    assert response.status_code == 302 and response["Cache-Control"] == "no-store"
    assert response["Location"] == f"/viewer/reads/{body['read']}/viewer?StudyInstanceUIDs={body['study_uid']}"

    # a protocol of masks alone opens the segmentation mode
    LabelEntry.objects.filter(version__project=cast.project).exclude(kind="mask").delete()
    response = reader.get(f"/viewer/reads/{body['read']}/")
    assert response["Location"] == f"/viewer/reads/{body['read']}/segmentation?StudyInstanceUIDs={body['study_uid']}"
    assert _config(reader.get(f"/viewer/reads/{body['read']}/app-config.js"))["radqueue"]["modes"] == ["segmentation"]


@pytest.mark.django_db
def test_a_reads_viewer_is_the_builds_index_loading_the_reads_config(cast, api, queued, fake_dist):
    body = _claim(api(cast.annotator))
    response = _session(cast.annotator).get(f"/viewer/reads/{body['read']}/segmentation",
                                            {"StudyInstanceUIDs": body["study_uid"]})
    assert response.status_code == 200 and response["Content-Type"] == "text/html; charset=utf-8"
    assert response["Cache-Control"] == "no-store" and response["X-Frame-Options"] == "SAMEORIGIN"
    html = response.content.decode()
    assert f'src="/viewer/reads/{body["read"]}/app-config.js"' in html and 'src="/viewer/app-config.js"' not in html
    assert f'src="/viewer/{HASHED}"' in html


@pytest.mark.django_db
def test_the_build_is_served_with_types_cache_rules_and_the_single_page_rewrite(client, fake_dist):
    bundle = client.get(f"/viewer/{HASHED}")
    assert bundle.status_code == 200 and b"".join(bundle.streaming_content) == b"console.log('ohif');"
    assert bundle["Content-Type"] == "text/javascript; charset=utf-8"
    assert bundle["Cache-Control"] == "public, max-age=31536000, immutable"
    wasm = client.get("/viewer/0ddf166f7a343eda.wasm")
    assert wasm["Content-Type"] == "application/wasm" and "immutable" in wasm["Cache-Control"]
    for unhashed in ("/viewer/app-config.js", "/viewer/assets/favicon.ico"):
        assert client.get(unhashed)["Cache-Control"] == "no-cache"
    later = http_date((fake_dist / HASHED).stat().st_mtime + 60)
    assert client.get(f"/viewer/{HASHED}", HTTP_IF_MODIFIED_SINCE=later).status_code == 304

    # any route that is not a file is the app: index.html, revalidated
    for route in ("/viewer/", "/viewer/viewer?StudyInstanceUIDs=1.2.3", "/viewer/segmentation", "/viewer/a/b/c"):
        page = client.get(route)
        assert page.status_code == 200 and page.content.decode() == INDEX, route
        assert page["Cache-Control"] == "no-cache" and page["Content-Type"] == "text/html; charset=utf-8"
    # a missing file is not a route; nothing outside the build is reachable
    assert client.get("/viewer/1234.bundle.ffffffffffffffff.js").status_code == 404
    for outside in ("/viewer/../secret.txt", "/viewer/%2e%2e/secret.txt", "/viewer/..%2fsecret.txt"):
        response = client.get(outside)
        assert response.status_code in (404, 200) and b"outside the build" not in b"".join(
            getattr(response, "streaming_content", [response.content])), outside
    assert client.post("/viewer/").status_code == 405


@pytest.mark.django_db
def test_without_the_build_the_viewer_says_it_is_not_installed_and_how(cast, api, queued, settings, tmp_path):
    settings.OHIF_DIR = str(tmp_path / "nowhere")
    page = Client().get("/viewer/")
    assert page.status_code == 503 and page["Cache-Control"] == "no-store"
    text = page.content.decode()
    assert "The viewer is not installed" in text and "make ohif" in text and "deploy/fetch_ohif.sh" in text
    assert str(tmp_path / "nowhere") in text

    body = _claim(api(cast.annotator))  # the rest of radqueue works without it
    read_page = _session(cast.annotator).get(f"/viewer/reads/{body['read']}/viewer")
    assert read_page.status_code == 503 and "make ohif" in read_page.content.decode()
    assert f"/dicomweb/reads/{body['read']}" in read_page.content.decode()
    assert _session(cast.annotator).get(f"/viewer/reads/{body['read']}/app-config.js").status_code == 200


# --- a real browser --------------------------------------------------------------------------------

def _browser_skip_reason() -> str | None:
    from tests.chromium import chromium_path

    if chromium_path() is None:
        return ("needs Chromium: install Debian's `chromium` package (.ci/run does) or set CHROMIUM to the "
                "browser's path")
    if ohif.dist_dir() is None:
        return f"needs the OHIF build: {ohif.install_hint()}"
    return None


# The image in OHIF's first viewport: cornerstone draws into a canvas inside .cornerstone-viewport-element.
CANVAS_PIXELS = """(() => {
  const canvas = document.querySelector('.cornerstone-viewport-element canvas, [data-viewport-uid] canvas');
  if (!canvas || !canvas.width || !canvas.height) return null;
  try { return {url: canvas.toDataURL('image/png'), width: canvas.width, height: canvas.height}; }
  catch (e) { return {error: String(e)}; }
})()"""


def _distinct_grey_levels(png: bytes) -> int:
    return len(Image.open(io.BytesIO(png)).convert("L").getcolors(maxcolors=256))


@pytest.mark.django_db(transaction=True)  # the server process reads what the test committed
def test_ohif_renders_a_claimed_ct_in_chromium_from_the_reads_own_root(cast, tmp_path):
    import base64

    import httpx
    from knox.models import AuthToken

    from core.dicom import synthetic
    from tasks.creation import create_tasks
    from tests.chromium import Browser
    from tests.conftest import PASSWORD
    from tests.servers import ROOT, asgi_servers
    from tests.tasks.conftest import ingest_series

    reason = _browser_skip_reason()
    if reason:
        pytest.skip(reason)
    ingest_series(cast.project, synthetic.make_ct_series(n_slices=12, rows=128, cols=128, seed=21,
                                                         patient={"name": "PAT^OHIF", "id": "P21"}))
    create_tasks(cast.project, by=cast.manager)
    token = AuthToken.objects.create(cast.annotator)[1]
    flags = ("--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist")

    with asgi_servers(1, tmp_path) as (port,), Browser(tmp_path / "profile", width=1400, height=900,
                                                      gpu_flags=flags) as browser:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base) as http:
            claim = http.post(NEXT, json={}, headers={"Authorization": f"Token {token}"})
            assert claim.status_code == 200, claim.text
            body = claim.json()
        assert body["dicomweb"]["root"] == f"{base}/dicomweb/reads/{body['read']}"

        # the reader signs in where the dashboard does, and lands on the read's viewer
        browser.navigate(f"{base}/viewer/reads/{body['read']}/")
        assert browser.evaluate("location.pathname") == "/dashboard/login/"
        browser.evaluate(f"""(() => {{
            document.querySelector('[name=username]').value = 'annotator';
            document.querySelector('[name=password]').value = {json.dumps(PASSWORD)};
            document.querySelector('main form').submit(); }})()""")
        browser.wait_for(f"location.pathname === '/viewer/reads/{body['read']}/viewer'", timeout=30)
        assert browser.evaluate("new URLSearchParams(location.search).get('StudyInstanceUIDs')") == body["study_uid"]
        assert browser.wait_for("document.readyState === 'complete' && window.config?.dataSources?.[0]"
                                ".configuration.wadoRoot") == body["dicomweb"]["root"]

        pixels = None
        try:
            browser.wait_for(f"({CANVAS_PIXELS}) !== null", timeout=90)
            # the canvas exists before the image is drawn: wait for more than a blank field
            for _ in range(120):
                pixels = browser.evaluate(CANVAS_PIXELS)
                if pixels and "url" in pixels and _distinct_grey_levels(
                        base64.b64decode(pixels["url"].split(",", 1)[1])) > 8:
                    break
                browser.wait_for("new Promise(r => setTimeout(() => r(true), 250))")
        finally:
            shot = browser.screenshot(tmp_path / "viewer-read.png")
            out = Path(os.environ.get("VIEWER_SCREENSHOT_DIR") or ROOT / "bench" / "out")
            out.mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, out / "viewer-read.png")
        page_text = browser.evaluate("document.body.innerText")
        requests_log = (tmp_path / f"uvicorn-{port}.log").read_text(errors="replace")

    assert pixels and "url" in pixels, (pixels, page_text[:500], requests_log[-2000:])
    png = base64.b64decode(pixels["url"].split(",", 1)[1])
    levels = _distinct_grey_levels(png)
    assert levels > 8, f"the viewport canvas has {levels} grey levels: nothing rendered? {page_text[:300]}"
    assert _distinct_grey_levels(shot.read_bytes()) > 8
    # every file OHIF asked for was under /viewer/ and there: the build is rebased whole
    missing = [line for line in requests_log.splitlines() if line.startswith("Not Found:")]
    assert set(missing) <= {"Not Found: /favicon.ico"}, missing  # the browser's own guess at the root
    assert "Scrolling Through Images" not in page_text  # no first-visit tour over the image
    # the reader's identity never reached the page: only the pseudonymous study
    assert "PAT^OHIF" not in page_text and "P21" not in page_text.split()
    assert AuditEvent.objects.filter(object_type="tasks.viewer_config", object_id=str(body["read"]),
                                     actor_id=cast.annotator.pk).exists()
