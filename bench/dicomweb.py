"""DICOMweb benchmark: a 512x512 CT opened as OHIF 3.13 opens it, from radqueue and from Orthanc.

    .venv/bin/python bench/dicomweb.py [--quick] [--rounds N]   (300 slices, 5 rounds; --quick: 60, 3)

The series (core.dicom.synthetic, 16-bit, uncompressed) is stored in both servers the way each takes
it: radqueue by STOW-RS to its live server (gunicorn, sync workers, core.wsgi, audit on: as deploy/
serves the API), so ingest records what DICOMweb serves; Orthanc (Debian's orthanc +
orthanc-dicomweb, SQLite index, no compression) by its REST upload. Then one "study open" is what
OHIF's DICOMweb data source sends: QIDO-RS studies (by StudyInstanceUID), series and instances, the
series metadata (WADO-RS, timed alone: ``metadata_ms``), then every instance's frame with 6
requests in flight (cornerstone's default), Accept ``multipart/related;
type=application/octet-stream; transfer-syntax=*``. ``first_frame_ms``: from the open's first
request to the first frame's last byte; ``frames_per_s``: frames over the frames phase;
``study_open_s``: the whole open. One warm-up open of each, then rounds alternating A B, B A, ...;
medians of each side's rounds.

``seg_save_s``: a 300-slice label map SEG (highdicom, as OHIF 3.13 writes it) STOW'd into a read's
DICOMweb root until the response says its findings are stored; null, with the reason on stderr,
where that root cannot take it.

Last line: one JSON object.
"""

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import (  # noqa: E402
    bench_organizations,
    print_machine,
    print_result,
    setup_django,
    use_bench_database,
)

CONCURRENCY = 6
OHIF_FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"
DICOM_JSON = "application/dicom+json"
STOW_BATCH = 25


def make_files(folder: Path, slices: int) -> list[Path]:
    from core.dicom import synthetic

    return synthetic.write_series(synthetic.make_ct_series(n_slices=slices, rows=512, cols=512, seed=3), folder)


def prepare():
    """A new project, its manager and the manager's token."""
    from django.db import connection, transaction
    from knox.models import AuthToken

    from bench.common import reset_audit_trail
    from core.memberships import grant_membership
    from core.models import Project, User
    from core.protocols import create_protocol_version

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("TRUNCATE tasks_read, tasks_task, core_instance, core_series, core_study "
                       "RESTART IDENTITY CASCADE")
        reset_audit_trail(cursor)
    vendor, client = bench_organizations()
    # A new project each run: the server's storage key is new each run, and a project's
    # de-identification secret is encrypted under the key it was made with.
    project = Project.objects.create(name=f"DICOMweb bench {time.time_ns()}", client=client, vendor=vendor,
                                     modalities=["CT", "SEG"], reads_per_task=1, gold_rate=0,
                                     requires_calibration=False)
    create_protocol_version(project=project, name="DICOMweb bench", template="generic_findings")
    manager, _ = User.objects.get_or_create(username="bench-dicomweb-manager", defaults={"organization": vendor})
    grant_membership(project=project, user=manager, role="manager")
    AuthToken.objects.filter(user=manager).delete()
    return project, manager, AuthToken.objects.create(manager)[1]


def multipart(payloads: list[bytes]) -> tuple[bytes, str]:
    boundary = "radqueue-bench-boundary"
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n"
                    for data in payloads) + b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def stow_radqueue(url: str, headers: dict, project_id: int, paths: list[Path]) -> None:
    with httpx.Client(timeout=300, headers=headers) as client:
        for start in range(0, len(paths), STOW_BATCH):
            body, content_type = multipart([p.read_bytes() for p in paths[start:start + STOW_BATCH]])
            answer = client.post(f"{url}/studies", params={"project": project_id}, content=body,
                                 headers={"Content-Type": content_type, "Accept": DICOM_JSON})
            assert answer.status_code == 200, answer.text[:500]


def get(url: str, headers: dict, accept: str) -> tuple[bytes, str]:
    """One GET on a connection of its own (gunicorn's sync workers close each): body, Content-Type."""
    request = urllib.request.Request(url, headers={**headers, "Accept": accept})
    with urllib.request.urlopen(request, timeout=120) as answer:
        return answer.read(), answer.headers["Content-Type"]


def open_study(url: str, headers: dict, study_uid: str) -> dict:
    """One study open as OHIF sends it; its timings."""

    def get_json(path: str, **params) -> list:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        return json.loads(get(f"{url}{path}{query}", headers, DICOM_JSON)[0])

    start = time.perf_counter()
    [_study] = get_json("/studies", StudyInstanceUID=study_uid, includefield="00081030,00080060")
    series_uids = [s["0020000E"]["Value"][0] for s in get_json(f"/studies/{study_uid}/series")]
    series_uid = max(series_uids, key=lambda uid: len(get_json(f"/studies/{study_uid}/series/{uid}/instances")))
    # Timed to the response's last byte: parsing it is the viewer's work, alike for both servers.
    metadata_start = time.perf_counter()
    body, _ = get(f"{url}/studies/{study_uid}/series/{series_uid}/metadata", headers, DICOM_JSON)
    metadata_s = time.perf_counter() - metadata_start
    metadata = json.loads(body)
    frame_urls = [f"{url}/studies/{study_uid}/series/{series_uid}/instances/{m['00080018']['Value'][0]}/frames/1"
                  for m in sorted(metadata, key=lambda m: m.get("00200013", {}).get("Value", [0])[0])]
    done = []

    def fetch(frame_url: str) -> int:
        body, content_type = get(frame_url, headers, OHIF_FRAMES)
        # The syntax is named on the part (radqueue) or in the message's type (Orthanc 1.10).
        assert b"transfer-syntax=" in body[:600] or "transfer-syntax=" in content_type, content_type
        done.append(time.perf_counter())
        return len(body)

    frames_start = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        sizes = list(pool.map(fetch, frame_urls))
    end = time.perf_counter()
    assert min(sizes) > 512 * 512 * 2
    return {"metadata_ms": metadata_s * 1000, "frames_per_s": len(frame_urls) / (end - frames_start),
            "first_frame_ms": (min(done) - start) * 1000, "study_open_s": end - start, "frames": len(frame_urls)}


def claim_a_read(base: str, project, manager) -> tuple[dict, str]:
    """The study's task claimed by a reader through the live server: the claim's body and the
    reader's token (the viewer opens the read's DICOMweb root with it)."""
    from knox.models import AuthToken

    from core.memberships import grant_membership
    from core.models import User
    from tasks.creation import create_tasks

    create_tasks(project, by=manager)
    vendor, _ = bench_organizations()
    reader, _ = User.objects.get_or_create(username="bench-dicomweb-reader", defaults={"organization": vendor})
    grant_membership(project=project, user=reader, role="annotator")
    token = AuthToken.objects.create(reader)[1]
    request = urllib.request.Request(f"{base}/api/queue/next/", data=b"{}", method="POST", headers={
        "Authorization": f"Token {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read()), token


def ohif_label_map(sources: list, label: str):
    """A Label Map Segmentation of every slice as OHIF 3.13 writes it: RLE Lossless, one segment
    coded with OHIF's placeholder Tissue concept and named by the label the reader typed; a disc on
    each slice."""
    import highdicom as hd
    import numpy as np
    from pydicom.uid import RLELossless

    rows, cols = sources[0].Rows, sources[0].Columns
    y, x = np.ogrid[:rows, :cols]
    disc = (y - rows // 2) ** 2 + (x - cols // 3) ** 2 < (rows // 10) ** 2
    mask = np.repeat(disc[np.newaxis].astype(np.uint8), len(sources), axis=0)
    tissue = hd.sr.CodedConcept("85756007", "SCT", "Tissue")
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label=label, segmented_property_category=tissue, segmented_property_type=tissue,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.LABELMAP,
        segment_descriptions=[segment], series_instance_uid=hd.UID(), series_number=100, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="OHIF", manufacturer_model_name="OHIF Viewer", software_versions="3.13.2",
        device_serial_number="1", transfer_syntax_uid=RLELossless)


def seg_save_seconds(claim: dict, token: str, series_uid: str) -> float:
    """A label map SEG of every slice STOW'd into the read's root until the answer says it is
    stored as the read's findings (STOW into a read answers once the draft holds them); raises
    RuntimeError saying why where the read's root cannot take it."""
    from dicomweb_client.api import DICOMwebClient

    from tasks.models import Read

    root, study_uid = claim["dicomweb"]["root"], claim["study_uid"]
    viewer = DICOMwebClient(url=root, headers={"Authorization": f"Bearer {token}"})
    sources = sorted(viewer.retrieve_series(study_uid, series_uid), key=lambda ds: float(ds.ImagePositionPatient[2]))
    out = io.BytesIO()
    ohif_label_map(sources, "Pneumothorax").save_as(out, enforce_file_format=True)
    body, content_type = multipart([out.getvalue()])
    # OHIF sends the type parameter unquoted (omitQuotationForMultipartRequest).
    request = urllib.request.Request(f"{root}/studies", data=body, method="POST", headers={
        "Authorization": f"Bearer {token}", "Accept": DICOM_JSON,
        "Content-Type": content_type.replace('type="application/dicom"', "type=application/dicom")})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=300) as answer:
            answer.read()
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"the read's root answered {exc.code}: {exc.read()[:300]!r}") from None
    elapsed = time.perf_counter() - start
    draft = Read.objects.get(pk=claim["read"]).draft or []
    if not any(f.get("label") == "pneumothorax" and "mask" in f for f in draft):
        raise RuntimeError(f"the save answered, but the read's draft holds no pneumothorax mask "
                           f"({len(draft)} findings)")
    return elapsed


def median_of(rounds: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int)
    args = parser.parse_args()
    slices = 60 if args.quick else 300
    rounds = args.rounds or (3 if args.quick else 5)

    database = use_bench_database("radqueue_bench_dicomweb")
    setup_django()
    print_machine(database)
    from bench import orthanc
    from bench.claims import running_server

    project, manager, token = prepare()
    headers = {"Authorization": f"Token {token}"}
    result: dict = {"slices": slices, "rounds": rounds, "concurrency": CONCURRENCY}
    with tempfile.TemporaryDirectory(prefix="dicomweb-bench-") as folder:
        paths = make_files(Path(folder), slices)
        with running_server(audit=True, workers=4) as server, orthanc.running_orthanc() as orthanc_url:
            ours = f"http://127.0.0.1:{server.port}/dicomweb"
            theirs = f"{orthanc_url}/dicom-web"
            started = time.perf_counter()
            try:
                stow_radqueue(ours, headers, project.pk, paths)
            except AssertionError:
                print(server.log.read_text()[-4000:], file=sys.stderr)
                raise
            print(f"radqueue STOW of {slices} slices: {time.perf_counter() - started:.1f} s", file=sys.stderr)
            for p in paths:
                orthanc.upload(orthanc_url, p.read_bytes())
            from core.dicom.models import Study

            our_uid = Study.objects.get(project=project).study_uid
            import pydicom

            their_uid = str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
            claim, reader_token = claim_a_read(f"http://127.0.0.1:{server.port}", project, manager)
            # The viewer a reader opens: the read's own root, with the reader's token as OHIF sends it.
            root = claim["dicomweb"]["root"]
            assert claim["study_uid"] == our_uid, claim
            sides = {"radqueue": (root, {"Authorization": f"Bearer {reader_token}"}, our_uid),
                     "orthanc": (theirs, {}, their_uid)}
            for side in sides.values():
                open_study(*side)  # warm-up: imports, caches, connections
            measured: dict[str, list[dict]] = {"radqueue": [], "orthanc": []}
            for i in range(rounds):
                order = ["radqueue", "orthanc"] if i % 2 == 0 else ["orthanc", "radqueue"]
                for name in order:
                    measured[name].append(open_study(*sides[name]))
                print(f"round {i + 1}: " + ", ".join(
                    f"{n} metadata {measured[n][-1]['metadata_ms']:.1f} ms, {measured[n][-1]['frames_per_s']:.1f} "
                    f"frames/s, open {measured[n][-1]['study_open_s']:.2f} s" for n in order), file=sys.stderr)
            errors = server.errors()
            if errors:
                print(f"server errors: {errors}", file=sys.stderr)
            try:
                series_uid = Study.objects.get(project=project).series.get().series_uid
                result["seg_save_s"] = round(seg_save_seconds(claim, reader_token, series_uid), 3)
            except RuntimeError as exc:
                result["seg_save_s"] = None
                print(f"seg_save_s: null: {exc}", file=sys.stderr)
            except Exception:  # noqa: BLE001 - the other figures still stand; the failure is shown
                result["seg_save_s"] = None
                print("seg_save_s: null: the save failed:\n" + traceback.format_exc(), file=sys.stderr)
    for key in ("metadata_ms", "frames_per_s", "first_frame_ms", "study_open_s"):
        result[key] = round(median_of(measured["radqueue"], key), 2)
        result[f"{key}_orthanc"] = round(median_of(measured["orthanc"], key), 2)
        result[f"{key}_rounds"] = [round(r[key], 2) for r in measured["radqueue"]]
        result[f"{key}_orthanc_rounds"] = [round(r[key], 2) for r in measured["orthanc"]]
    result["metadata_speedup_vs_orthanc"] = round(result["metadata_ms_orthanc"] / result["metadata_ms"], 2)
    result["frames_ratio_vs_orthanc"] = round(result["frames_per_s"] / result["frames_per_s_orthanc"], 2)
    print_result(result)


if __name__ == "__main__":
    main()
