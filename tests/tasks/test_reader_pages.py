"""The reader's pages (/work/, tasks.reader_pages): the worklist, a read's page with OHIF beside the
findings panel (its reader's alone while the read is live), the panel's answers merged into the
draft beside what the viewer saved, and OHIF's session-authenticated save passing Django's CSRF
check only with the header the viewer's config adds."""

import json

import pytest
from django.test import Client

from audit.models import AuditEvent
from tasks.models import Read, ReadObject
from tasks.reads import release_read
from tests.tasks.test_read_objects import _sources, _stow, ohif_label_map

NEXT = "/api/queue/next/"


def _claim(client) -> dict:
    response = client.post(NEXT, {}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def _session(user, **kwargs) -> Client:
    client = Client(**kwargs)
    client.force_login(user)
    return client


def _as_set(findings) -> set[str]:
    return {json.dumps(f, sort_keys=True) for f in findings}


def _answers(client, read_id, answers, **headers):
    return client.put(f"/work/reads/{read_id}/answers/", json.dumps({"answers": answers}),
                      content_type="application/json", **headers)


@pytest.mark.django_db
def test_the_worklist_lists_the_readers_own_open_reads_per_project_with_their_lease(cast, api, queued):
    mine = _claim(api(cast.annotator))
    theirs = _claim(api(cast.second_annotator))

    page = _session(cast.annotator).get("/work/")
    assert page.status_code == 200
    html = page.content.decode()
    assert cast.project.name in html and f'href="/work/reads/{mine["read"]}/"' in html
    assert f'data-read="{theirs["read"]}"' not in html
    assert f'data-expires="{Read.objects.get(pk=mine["read"]).lease_expires_at.isoformat()}"' in html
    assert f'class="next" data-project="{cast.project.pk}"' in html
    assert "gold" not in html.lower() and "calibration" not in html.lower()  # checks look like production
    assert AuditEvent.objects.filter(object_type="tasks.worklist", actor_id=cast.annotator.pk).exists()

    signed_out = Client().get("/work/")
    assert signed_out.status_code == 302 and signed_out["Location"].startswith("/dashboard/login/?next=/work/")


@pytest.mark.django_db
def test_a_read_page_is_its_readers_while_the_read_is_live_and_404_to_anyone_else(cast, api, queued):
    body = _claim(api(cast.annotator))
    url = f"/work/reads/{body['read']}/"
    reader = _session(cast.annotator)
    page = reader.get(url)
    assert page.status_code == 200
    html = page.content.decode()
    assert f'src="/viewer/reads/{body["read"]}/"' in html or "The viewer is not installed" in html
    # generic_findings' one classification with its categories, and the labels to draw in OHIF
    assert 'data-field="finding_laterality"' in html and 'name="finding_laterality" value="left"' in html
    assert 'data-field="mean_attenuation"' in html and "Pneumothorax (mask)" in html
    assert page.cookies.get("csrftoken")  # what the page's scripts and OHIF's saves send back
    assert AuditEvent.objects.filter(object_type="tasks.read_page", object_id=str(body["read"]),
                                     outcome="allowed").count() == 1

    for user in (cast.second_annotator, cast.manager, cast.outsider):
        assert _session(user).get(url).status_code == 404
    assert AuditEvent.objects.filter(object_type="tasks.read_page", outcome="denied").count() == 3
    assert Client().get(url)["Location"].startswith("/dashboard/login/")

    release_read(body["read"], cast.annotator)
    assert reader.get(url).status_code == 404
    assert f'data-read="{body["read"]}"' not in reader.get("/work/").content.decode()


@pytest.mark.django_db
def test_the_panels_answers_replace_only_their_own_findings_in_the_draft(cast, api, queued):
    client = api(cast.annotator)
    body = _claim(client)
    reader = _session(cast.annotator)
    seg = ohif_label_map(_sources(body["study_uid"]), "Pneumothorax", voxels=[(0, 3, 4), (0, 3, 5)])
    assert _stow(reader, body["read"], seg).status_code == 200  # the viewer's save (Django's test client skips CSRF)
    [mask] = Read.objects.get(pk=body["read"]).draft

    assert _answers(reader, body["read"], {"finding_laterality": "left", "mean_attenuation": "41.5"}).status_code == 200
    assert _answers(reader, body["read"], {"finding_laterality": "right"}).status_code == 200  # mean_attenuation kept
    draft = Read.objects.get(pk=body["read"]).draft
    assert _as_set(draft) == _as_set([mask, {"label": "finding_laterality", "value": "right"},
                                      {"label": "mean_attenuation", "value": 41.5, "unit": "[hnsf'U]"}])
    saved = reader.get(f"/work/reads/{body['read']}/", {"part": "saved"}).content.decode()
    assert 'data-label="pneumothorax"' in saved and "Pneumothorax · mask" in saved and "finding_laterality" not in saved

    # each bad answer is named at its field; nothing of the request is stored
    refused = _answers(reader, body["read"],
                       {"finding_laterality": "up", "mean_attenuation": "dense", "nodule": "x", "ghost": 1})
    assert refused.status_code == 400
    assert set(refused.json()["errors"]) == {"finding_laterality", "mean_attenuation", "nodule", "ghost"}
    assert "left" in refused.json()["errors"]["finding_laterality"][0]
    assert Read.objects.get(pk=body["read"]).draft == draft

    # a later viewer save replaces its own findings and keeps the panel's
    seg2 = ohif_label_map(_sources(body["study_uid"]), "Pneumothorax", voxels=[(1, 2, 2)], series_number=101)
    assert _stow(reader, body["read"], seg2).status_code == 200
    labels = sorted(f["label"] for f in Read.objects.get(pk=body["read"]).draft)
    assert labels == ["finding_laterality", "mean_attenuation", "pneumothorax"]

    submitted = client.post(f"/api/reads/{body['read']}/submit/", {}, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert submitted.status_code == 200, submitted.content
    assert sorted(f["label"] for f in submitted.json()["findings"]) == labels
    assert _answers(reader, body["read"], {"finding_laterality": "left"}).status_code == 409  # the read is over


@pytest.mark.django_db
def test_a_session_authenticated_stow_needs_the_csrf_header_the_viewers_config_adds(cast, api, queued):
    body = _claim(api(cast.annotator))
    browser = _session(cast.annotator, enforce_csrf_checks=True)  # as a browser is checked
    assert browser.get(f"/work/reads/{body['read']}/").status_code == 200
    token = browser.cookies["csrftoken"].value
    seg = ohif_label_map(_sources(body["study_uid"]), "Pneumothorax", voxels=[(0, 3, 4)])

    refused = _stow(browser, body["read"], seg)
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"], refused.content
    assert not ReadObject.objects.filter(read_id=body["read"]).exists()
    assert _answers(browser, body["read"], {"finding_laterality": "left"}).status_code == 403

    browser.defaults["HTTP_X_CSRFTOKEN"] = token
    assert _stow(browser, body["read"], seg).status_code == 200
    assert ReadObject.objects.filter(read_id=body["read"]).count() == 1
    assert _answers(browser, body["read"], {"finding_laterality": "left"}).status_code == 200

    # the config sends that header to the read's own root only (checked in a browser below)
    config = browser.get(f"/viewer/reads/{body['read']}/app-config.js").content.decode()
    guard, _, _ = config.partition("\nwindow.config = ")
    assert f'"{body["dicomweb"]["root"]}/", {body["read"]}, "csrftoken", "X-CSRFTOKEN"' in guard


@pytest.mark.django_db
def test_a_lapsed_read_leaves_its_page_and_shows_as_lapsed_on_the_worklist(cast, api, queued):
    from datetime import timedelta

    from django.utils import timezone

    body = _claim(api(cast.annotator))
    reader = _session(cast.annotator)
    assert reader.get(f"/work/reads/{body['read']}/").status_code == 200
    Read.objects.filter(pk=body["read"]).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert reader.get(f"/work/reads/{body['read']}/").status_code == 404
    assert reader.get(f"/viewer/reads/{body['read']}/app-config.js").status_code == 404
    row = reader.get("/work/").content.decode().split(f'data-read="{body["read"]}"', 1)[1]
    assert ">lapsed</td>" in row.split("</tr>", 1)[0]


@pytest.mark.django_db
def test_a_grading_protocols_panel_offers_its_scale_with_the_coded_concepts(cast, api, queued):
    from core.protocols import create_protocol_version
    from tasks.models import Task

    birads = create_protocol_version(project=cast.project, name="BI-RADS", template="birads", by=cast.manager)
    body = _claim(api(cast.annotator))
    Task.objects.filter(pk=body["task"]).update(protocol_version=birads)
    html = _session(cast.annotator).get(f"/work/reads/{body['read']}/").content.decode()
    assert 'data-field="birads_assessment" data-kind="ordinal"' in html
    for value in ("0", "1", "2", "3", "4A", "4B", "4C", "5", "6"):
        assert f'name="birads_assessment" value="{value}"' in html, value
    assert 'title="SCT 397140005 · 1 - Negative"' in html

    reader = _session(cast.annotator)
    assert _answers(reader, body["read"], {"birads_assessment": "4B"}).status_code == 200
    refused = _answers(reader, body["read"], {"birads_assessment": "7"})
    assert refused.status_code == 400 and "4A" in refused.json()["errors"]["birads_assessment"][0]
    assert Read.objects.get(pk=body["read"]).draft == [{"label": "birads_assessment", "value": "4B"}]


@pytest.mark.django_db
def test_without_the_viewer_the_read_page_says_how_to_install_it(cast, api, queued, settings, tmp_path):
    settings.OHIF_DIR = str(tmp_path / "nowhere")
    body = _claim(api(cast.annotator))
    html = _session(cast.annotator).get(f"/work/reads/{body['read']}/").content.decode()
    assert "The viewer is not installed" in html and "make ohif" in html and "<iframe" not in html
    assert 'data-field="finding_laterality"' in html  # the panel works without it


@pytest.mark.django_db(transaction=True)  # each thread commits on its own connection
def test_the_panels_answers_and_the_viewers_saves_racing_never_drop_each_other(cast, api, queued):
    import threading

    from django.db import connections

    body = _claim(api(cast.annotator))
    sources = _sources(body["study_uid"])
    segs = [ohif_label_map(sources, "Pneumothorax", voxels=[(0, 2, i + 1)], series_number=200 + i) for i in range(5)]
    values = ["left", "right", "bilateral", "left", "right"]
    statuses, barrier = [], threading.Barrier(2)

    def run(send):
        try:
            client = _session(cast.annotator)
            for i in range(5):
                barrier.wait(timeout=30)
                statuses.append(send(client, i))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(lambda c, i: _stow(c, body["read"], segs[i]).status_code,)),
               threading.Thread(target=run, args=(lambda c, i: _answers(
                   c, body["read"], {"finding_laterality": values[i]}).status_code,))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert statuses == [200] * 10
    draft = Read.objects.get(pk=body["read"]).draft
    assert sorted(f["label"] for f in draft) == ["finding_laterality", "pneumothorax"]  # the last of each
    assert {"label": "finding_laterality", "value": "right"} in draft
    [mask] = [f for f in draft if f["label"] == "pneumothorax"]
    assert mask == ReadObject.objects.get(read_id=body["read"], superseded_at__isnull=True).findings[0]


# --- a real browser --------------------------------------------------------------------------------

IFRAME = "document.getElementById('viewer').contentWindow"
CANVAS_PIXELS = f"""(() => {{
  const doc = {IFRAME}.document;
  const canvas = doc.querySelector('.cornerstone-viewport-element canvas, [data-viewport-uid] canvas');
  if (!canvas || !canvas.width || !canvas.height) return null;
  try {{ return canvas.toDataURL('image/png'); }} catch (e) {{ return null; }}
}})()"""


def _grey_levels(data_url: str) -> int:
    import base64
    import io

    from PIL import Image

    png = base64.b64decode(data_url.split(",", 1)[1])
    return len(Image.open(io.BytesIO(png)).convert("L").getcolors(maxcolors=256))


def _in_viewer(request: str) -> str:
    """JavaScript sending ``request`` from the viewer's frame, where its config's guard is installed."""
    return f"(async () => {{ const w = {IFRAME}; {request} }})()"


@pytest.mark.django_db(transaction=True)  # the server process reads what the test committed
def test_a_reader_takes_the_next_case_reads_it_beside_the_panel_and_submits_in_chromium(cast, tmp_path):
    import base64
    import io
    import os
    import shutil
    from pathlib import Path

    from core.dicom import synthetic
    from tasks import ohif
    from tasks.creation import create_tasks
    from tests.chromium import Browser, chromium_path
    from tests.conftest import PASSWORD
    from tests.servers import ROOT, asgi_servers
    from tests.tasks.conftest import ingest_series

    if chromium_path() is None:
        pytest.skip("needs Chromium: install Debian's `chromium` package (.ci/run does) or set CHROMIUM")
    if ohif.dist_dir() is None:
        pytest.skip(f"needs the OHIF build: {ohif.install_hint()}")
    ingest_series(cast.project, synthetic.make_ct_series(n_slices=8, rows=128, cols=128, seed=22,
                                                         patient={"name": "PAT^WORK", "id": "P22"}))
    create_tasks(cast.project, by=cast.manager)
    flags = ("--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist")
    out = Path(os.environ.get("VIEWER_SCREENSHOT_DIR") or ROOT / "bench" / "out")
    out.mkdir(parents=True, exist_ok=True)

    with asgi_servers(1, tmp_path) as (port,), Browser(tmp_path / "profile", width=1600, height=900,
                                                      gpu_flags=flags) as browser:
        base = f"http://127.0.0.1:{port}"
        browser.navigate(f"{base}/work/")
        assert browser.evaluate("location.pathname") == "/dashboard/login/"
        browser.evaluate(f"""(() => {{
            document.querySelector('[name=username]').value = 'annotator';
            document.querySelector('[name=password]').value = {json.dumps(PASSWORD)};
            document.querySelector('main form').submit(); }})()""")
        browser.wait_for("location.pathname === '/work/' && document.readyState === 'complete'", timeout=30)
        browser.evaluate("document.querySelector('button.next').click()")
        read_id = int(browser.wait_for(
            "(location.pathname.match(/^\\/work\\/reads\\/(\\d+)\\/$/) || [])[1]", timeout=30))
        read = Read.objects.select_related("task__study").get(pk=read_id)
        assert read.reader_id == cast.annotator.pk and read.state == "claimed"
        root = f"{base}/dicomweb/reads/{read_id}"

        try:
            assert browser.wait_for(f"{IFRAME}.config?.dataSources?.[0].configuration.stowRoot", timeout=60) == root
            image = None
            for _ in range(240):  # the canvas exists before the image is drawn
                image = browser.evaluate(CANVAS_PIXELS)
                if image and _grey_levels(image) > 8:
                    break
                browser.wait_for("new Promise(r => setTimeout(() => r(true), 250))")
            assert image and _grey_levels(image) > 8, "OHIF's viewport canvas stayed blank in the read page"
            browser.screenshot(tmp_path / "s.png")
            shutil.copy(tmp_path / "s.png", out / "work-read-opened.png")

            # the viewer's guard: Django's CSRF header on unsafe requests to the read's root only
            empty_stow = ("{method: 'POST', headers: {'Content-Type': 'multipart/related; type=\"application/dicom\"; "
                          "boundary=x'}, body: '--x--\\r\\n'}")
            assert browser.evaluate(_in_viewer(
                f"return (await w.fetch({json.dumps(root + '/studies')}, {empty_stow})).status;")) == 400
            assert browser.evaluate(_in_viewer(
                f"return (await w.fetch('/api/reads/{read_id}/heartbeat/', {{method: 'POST'}})).status;")) == 403
            assert browser.evaluate(_in_viewer(
                f"return (await fetch('/api/reads/{read_id}/heartbeat/', {{method: 'POST'}})).status;")) == 403

            # a SEG saved from the viewer's frame with its XHR, as OHIF's DICOMweb client sends one
            seg = ohif_label_map(_sources(read.task.study.study_uid), "Pneumothorax", voxels=[(0, 60, 60), (1, 60, 61)])
            part = io.BytesIO()
            seg.save_as(part, enforce_file_format=True)
            stow = f"""
                const bytes = Uint8Array.from(atob({json.dumps(base64.b64encode(part.getvalue()).decode())}),
                                              c => c.charCodeAt(0));
                const head = new TextEncoder().encode('--b\\r\\nContent-Type: application/dicom\\r\\n\\r\\n');
                const tail = new TextEncoder().encode('\\r\\n--b--\\r\\n');
                const body = new Uint8Array(head.length + bytes.length + tail.length);
                body.set(head); body.set(bytes, head.length); body.set(tail, head.length + bytes.length);
                return await new Promise(done => {{
                  const xhr = new w.XMLHttpRequest();
                  xhr.open('POST', {json.dumps(root + '/studies')});
                  xhr.setRequestHeader('Content-Type', 'multipart/related; type="application/dicom"; boundary=b');
                  xhr.onloadend = () => done(xhr.status);
                  xhr.send(body.buffer);
                }});"""
            assert browser.evaluate(_in_viewer(stow)) == 200
            browser.wait_for("document.querySelector('#saved [data-label=pneumothorax]') !== null", timeout=20)

            # a grade chosen in the panel autosaves beside the mask; submit sends the draft
            browser.evaluate("document.querySelector('input[name=finding_laterality][value=left]').click()")
            browser.wait_for("document.getElementById('autosave').textContent === 'Draft saved.'", timeout=20)
            browser.evaluate("document.getElementById('submit').click()")
            browser.wait_for("!document.getElementById('submitted').hidden", timeout=30)
        finally:
            browser.screenshot(tmp_path / "s.png")
            shutil.copy(tmp_path / "s.png", out / "work-read-submitted.png")
        page_text = browser.evaluate("document.body.innerText")

    read.refresh_from_db()
    assert read.state == "submitted"
    labels = sorted(f["label"] for f in read.findings)
    assert labels == ["finding_laterality", "pneumothorax"]
    [grade] = [f for f in read.findings if f["label"] == "finding_laterality"]
    assert grade["value"] == "left" and grade["kind"] == "classification"  # stored normalised, with its concept
    assert "PAT^WORK" not in page_text and "P22" not in page_text.split()
