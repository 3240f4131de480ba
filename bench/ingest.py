"""Ingest benchmark: a 512x512 CT series through radqueue's whole path next to Orthanc's REST ingest
of the same files, de-identification next to dicognito, and the memory of one large upload.

    .venv/bin/python bench/ingest.py [--quick]   (300 slices, 3 rounds, a 1 GB file; --quick: 60, 3, 200 MB)

Throughput. radqueue's path: parse up to the pixel data, validate, de-identify (PS3.15), write the
de-identified file with its pixel data copied, AES-256-GCM encrypt, store, index in PostgreSQL,
audit: the ingest service as `manage.py ingest` runs it (parsing and de-identification in one
worker process per core, storing and indexing in order in the main one), into a new project each
round. Orthanc (Debian's orthanc, SQLite index, no compression, a fresh one each round) receives
the same files one POST /instances at a time from one client on loopback. The two alternate
(A B, B A, A B, ...) and the median of each side's rounds is reported; the series is written to a
temporary folder first and read from the page cache by both. De-identification: bench/deid_compare.py
(five or more alternating rounds, medians).

Memory. A multi-frame Enhanced CT (16-bit, 512x512 frames, uncompressed; 2,000 frames, 1 GB;
--quick: 400, 200 MB), written to disk a frame at a time, is uploaded over HTTP, streamed as a
multipart body, to POST /api/projects/{id}/studies/upload/ on a gunicorn worker serving core.wsgi
as deploy/'s bulk unit does (gthread). The worker's resident set is read from /proc: its baseline
(after a small warm-up upload, the peak counter then reset) and its peak during the large upload.

Last line: one JSON object (instances_per_s, orthanc_instances_per_s, ratio_vs_orthanc, rounds,
deid_files_per_s, dicognito_files_per_s, deid_speedup_vs_dicognito, peak_rss_mb, baseline_rss_mb,
largest_frame_mb, memory_file_mb, ...); Orthanc's figures are null with orthanc_reason when it
cannot run here.
"""

import argparse
import base64
import os
import resource
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import bench_organizations, print_machine, print_result, setup_django, use_bench_database  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FRAME_ROWS = FRAME_COLS = 512


def make_series(folder: Path, slices: int) -> list[Path]:
    from core.dicom import synthetic

    datasets = synthetic.make_ct_series(n_slices=slices, rows=512, cols=512, seed=1)
    return synthetic.write_series(datasets, folder)


def new_project(name: str):
    from core.models import Project

    vendor, client = bench_organizations()
    return Project.objects.create(name=f"{name} {time.time_ns()}", client=client, vendor=vendor,
                                  modalities=["CT"])


def _cpu(times) -> float:
    return times.user + times.system + times.children_user + times.children_system


def time_radqueue(paths: list[Path]) -> tuple[float, float]:
    """(instances/s, CPU ms per instance of this process and its workers, PostgreSQL's not counted)."""
    from core.dicom.ingest import IngestItem, ingest_files
    from core.dicom.models import Instance

    project = new_project("ingest bench")
    items = (IngestItem(p.name, path=str(p), size=p.stat().st_size) for p in paths)
    start, cpu = time.perf_counter(), _cpu(os.times())
    # As `manage.py ingest` runs it: parsing and de-identification in one process per core. The
    # pool is joined when it returns, so its workers' CPU time is counted in children_*.
    report = ingest_files(project, items, by=None, source="folder", workers=os.cpu_count() or 1)
    elapsed, cpu = time.perf_counter() - start, _cpu(os.times()) - cpu
    assert report.accepted == len(paths), report.as_dict()["files"][:3]
    assert Instance.objects.filter(project=project).count() == len(paths)
    return len(paths) / elapsed, cpu * 1000 / len(paths)


def time_orthanc(paths: list[Path], warm_up: bytes) -> tuple[float, float]:
    """(instances/s, CPU ms per instance of the Orthanc process, the client's not counted)."""
    from bench import orthanc

    payloads = [p.read_bytes() for p in paths]
    with orthanc.running_orthanc_process() as (url, process):
        orthanc.upload(url, warm_up)  # another series' file: the first request opens the index
        start, cpu = time.perf_counter(), orthanc.cpu_seconds(process)
        for data in payloads:
            answer = orthanc.upload(url, data)
            assert answer.get("Status") == "Success", answer
        elapsed, cpu = time.perf_counter() - start, orthanc.cpu_seconds(process) - cpu
        return len(payloads) / elapsed, cpu * 1000 / len(payloads)


def stages(paths: list[Path]) -> dict:
    """CPU ms per file of each stage of radqueue's prepare-and-seal, in this process (best of 3
    passes): parse up to the pixel data, validate and check every value, read the index metadata,
    de-identify, write the de-identified file (pixel data copied), encrypt it."""
    import io

    from core.dicom import deid, part10, prepare
    from core.dicom.crypto import EncryptingWriter, KeyRing

    datas = [p.read_bytes() for p in paths[:50]]
    ring, options, secret = KeyRing.generate(), deid.DeidOptions(), b"bench" * 8

    def parsed(data):
        return prepare.parse(io.BytesIO(data), len(data), 1 << 40)

    def indexed(data):
        part = parsed(data)
        prepare.index_metadata(part.ds)
        return part

    def deidentified(data):
        part = indexed(data)
        part.remember()
        deid.deidentify_dataset(part.ds, secret=secret, options=options)
        return part

    def written(data):
        deidentified(data).write(io.BytesIO())

    def sealed(data):
        writer = EncryptingWriter(io.BytesIO(), ring, context=b"bench")
        deidentified(data).write(writer)
        writer.finish()

    steps = {"read": lambda d: part10.read(io.BytesIO(d)), "validate": parsed, "index_metadata": indexed,
             "deidentify": deidentified, "write": written, "encrypt": sealed}
    cumulative = {}
    for name, step in steps.items():
        best = float("inf")
        for _ in range(3):
            started = time.process_time()
            for data in datas:
                step(data)
            best = min(best, (time.process_time() - started) * 1000 / len(datas))
        cumulative[name] = best
    result, before = {}, 0.0
    for name, total in cumulative.items():  # each step's own share: its cumulative time less the one before
        result[name] = round(max(total - before, 0.0), 2)
        before = max(total, before)
    result["total"] = round(before, 2)
    return result


def throughput(paths: list[Path], warm_up: bytes, rounds: int) -> dict:
    """Alternating rounds of radqueue (A) and Orthanc (B); each side's rates and medians."""
    from bench import orthanc

    reason = orthanc.unavailable_reason()
    ours: list[float] = []
    theirs: list[float] = []
    cpu: dict[str, list[float]] = {"radqueue": [], "orthanc": []}
    time_radqueue(paths[:4])  # warm: imports, the profile table, the first project's secret
    for index in range(rounds):
        order = ("A", "B") if index % 2 == 0 else ("B", "A")
        for side in order:
            if side == "A":
                rate, ms = time_radqueue(paths)
                ours.append(rate)
                cpu["radqueue"].append(ms)
            elif not reason:
                try:
                    rate, ms = time_orthanc(paths, warm_up)
                    theirs.append(rate)
                    cpu["orthanc"].append(ms)
                except RuntimeError as exc:
                    reason = str(exc)
        pair = f"radqueue {ours[-1]:6.1f}/s" + (f", Orthanc {theirs[-1]:6.1f}/s" if len(theirs) > index else "")
        print(f"round {index + 1} ({' '.join(order)}): {pair}")
    result = {"instances_per_s": round(statistics.median(ours), 1), "radqueue_rounds": [round(r, 1) for r in ours],
              "orthanc_instances_per_s": None, "ratio_vs_orthanc": None,
              "radqueue_cpu_ms_per_instance": round(statistics.median(cpu["radqueue"]), 2),
              "orthanc_cpu_ms_per_instance": round(statistics.median(cpu["orthanc"]), 2) if cpu["orthanc"] else None}
    if len(theirs) == rounds:
        median = statistics.median(theirs)
        result.update(orthanc_instances_per_s=round(median, 1), orthanc_rounds=[round(r, 1) for r in theirs],
                      ratio_vs_orthanc=round(statistics.median(ours) / median, 2),
                      ratio_per_round=[round(a / b, 2) for a, b in zip(ours, theirs, strict=True)])
    else:
        result["orthanc_reason"] = reason or "Orthanc failed in a round"
    return result


# --- memory: one large multi-frame upload to a live server --------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        children.extend(int(c) for c in text)
    return children


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _multipart(path: Path, boundary: str, chunk: int = 1024 * 1024):
    """The file as one multipart/form-data part named ``files``, read a chunk at a time; (length, iterator)."""
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{path.name}\"\r\n"
            "Content-Type: application/dicom\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def body():
        yield head
        with open(path, "rb") as source:
            while block := source.read(chunk):
                yield block
        yield tail

    return len(head) + path.stat().st_size + len(tail), body()


def _upload(base: str, token: str, project_id: int, path: Path) -> dict:
    import httpx

    boundary = secrets.token_hex(16)
    length, body = _multipart(path, boundary)
    response = httpx.post(f"{base}/api/projects/{project_id}/studies/upload/", content=body, timeout=1800,
                          headers={"Authorization": f"Token {token}", "Content-Length": str(length),
                                   "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 201, (response.status_code, response.text[:500])
    return response.json()


def memory(frames: int, folder: Path) -> dict:
    """Peak resident memory of the gunicorn worker that ingests one upload of ``frames`` 512x512 frames."""
    import httpx
    from knox.models import AuthToken

    from core.dicom import synthetic
    from core.models import User

    big, small = folder / "enhanced-ct.dcm", folder / "warm-up.dcm"
    size = synthetic.write_enhanced_ct_file(big, frames, FRAME_ROWS, FRAME_COLS)
    synthetic.write_enhanced_ct_file(small, 4, FRAME_ROWS, FRAME_COLS, seed=2)
    vendor, _ = bench_organizations()
    user = User.objects.filter(username="ingest-bench").first() or User.objects.create_superuser(
        username="ingest-bench", password=secrets.token_urlsafe(16), organization=vendor)
    token = AuthToken.objects.create(user)[1]
    project = new_project("memory bench")
    port = _free_port()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "core.settings", "DEBUG": "0",
           "SECRET_KEY": secrets.token_urlsafe(64), "ALLOWED_HOSTS": "127.0.0.1", "SECURE_SSL_REDIRECT": "0",
           "RADQUEUE_STORAGE_KEY": "k1:" + base64.b64encode(os.urandom(32)).decode(),
           "RADQUEUE_DATA_DIR": str(folder / "data"), "LOG_LEVEL": "WARNING"}
    log = open(folder / "gunicorn.log", "wb")  # noqa: SIM115 - closed with the server
    # deploy/systemd/radqueue-bulk.service's command, with one worker so there is one process to watch.
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "core.wsgi:application", "--preload", "--worker-class", "gthread",
         "--workers", "1", "--threads", "8", "--timeout", "3600", "--bind", f"127.0.0.1:{port}",
         "--control-socket", str(folder / "gunicorn.ctl")], cwd=ROOT, env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("gunicorn did not start: " + (folder / "gunicorn.log").read_text()[-2000:])
            time.sleep(0.3)
        (worker,) = _children(server.pid)
        _upload(base, token, project.pk, small)  # imports, connections, the project's secret
        baseline_kb = _status_kb(worker, "VmRSS")
        Path(f"/proc/{worker}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        started = time.perf_counter()
        report = _upload(base, token, project.pk, big)
        elapsed = time.perf_counter() - started
        peak_kb = _status_kb(worker, "VmHWM")
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    assert report["accepted"] == 1, report
    frame_mb = FRAME_ROWS * FRAME_COLS * 2 / 2**20
    print(f"memory: {frames} frames of {FRAME_ROWS}x{FRAME_COLS} 16-bit ({size / 2**20:.0f} MiB) uploaded in "
          f"{elapsed:.1f} s; worker RSS {baseline_kb / 1024:.0f} MiB before, peak {peak_kb / 1024:.0f} MiB "
          f"(+{(peak_kb - baseline_kb) / 1024:.1f} MiB = {(peak_kb - baseline_kb) / 1024 / frame_mb:.1f} frames "
          f"of {frame_mb:.2f} MiB)")
    return {"peak_rss_mb": round(peak_kb / 1024, 1), "baseline_rss_mb": round(baseline_kb / 1024, 1),
            "peak_over_baseline_mb": round((peak_kb - baseline_kb) / 1024, 1), "largest_frame_mb": round(frame_mb, 2),
            "memory_file_mb": round(size / 2**20, 1), "memory_frames": frames,
            "memory_upload_mb_per_s": round(size / 2**20 / elapsed, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="60 slices and a 200 MB file instead of 300 and 1 GB")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of each side (default 3)")
    args = parser.parse_args()
    slices, frames = (60, 400) if args.quick else (300, 2000)
    database = use_bench_database("radqueue_bench_ingest")
    setup_django()
    print_machine(database)
    from bench.deid_compare import measure, test_files
    from core.dicom import synthetic

    result: dict = {"slices": slices, "rounds": args.rounds}
    with tempfile.TemporaryDirectory(prefix="radqueue-ingest-bench-") as folder:
        paths = make_series(Path(folder) / "series", slices)
        print(f"series: {slices} slices of 512x512 CT, {sum(p.stat().st_size for p in paths) / 1e6:.1f} MB")
        for path in paths:  # page cache, so both sides read from memory
            path.read_bytes()
        warm_up = synthetic.to_bytes(synthetic.make_ct_series(n_slices=1, rows=512, cols=512, seed=2)[0])
        result.update(throughput(paths, warm_up, args.rounds))
        result["stage_cpu_ms_per_file"] = stages(paths)
    print(f"CPU per instance: radqueue {result['radqueue_cpu_ms_per_instance']} ms (this process and its workers), "
          f"Orthanc {result['orthanc_cpu_ms_per_instance']} ms (its process); radqueue's stages, ms per file: "
          + ", ".join(f"{k} {v}" for k, v in result["stage_cpu_ms_per_file"].items()))
    print(f"ingest: radqueue {result['instances_per_s']} instances/s, Orthanc {result['orthanc_instances_per_s']}"
          f" instances/s (median of {args.rounds} alternating rounds), ratio {result['ratio_vs_orthanc']}")
    deid_rounds = max(args.rounds, 5)  # a round takes about a second: more of them steady the median
    deid = measure(test_files(), rounds=deid_rounds)
    print(f"de-identification on pydicom's test files ({deid['files']} files, median of {deid_rounds} alternating "
          f"rounds): radqueue {deid['deid_files_per_s']} files/s, dicognito {deid['dicognito_files_per_s']} files/s")
    result.update(deid_files_per_s=deid["deid_files_per_s"], dicognito_files_per_s=deid["dicognito_files_per_s"],
                  deid_speedup_vs_dicognito=deid["speedup_vs_dicognito"], deid_rounds=deid["deid_rounds"],
                  dicognito_rounds=deid["dicognito_rounds"])
    with tempfile.TemporaryDirectory(prefix="radqueue-memory-bench-") as folder:
        result.update(memory(frames, Path(folder)))
    result["bench_process_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print_result(result)


if __name__ == "__main__":
    main()
