"""Ingest benchmark: a 512x512 CT series through radqueue's whole path, next to plain pydicom and
Orthanc's REST ingest of the same files, and de-identification next to dicognito.

    .venv/bin/python bench/ingest.py [--quick]        (300 slices; --quick: 60)

radqueue's path: parse and fully decode, de-identify (PS3.15), serialise, AES-256-GCM encrypt,
store, index in PostgreSQL, audit: the ingest service as `manage.py ingest` runs it (parsing and
de-identification in one worker process per core, storing and indexing in order in the main one).
Orthanc (Debian's orthanc 1.10, SQLite index, no compression) receives
the same files one POST /instances at a time from one client on loopback. Both run on this 2-core
machine; the series is written to a temporary folder first and read from the page cache by both.
Last line: one JSON object with instances_per_s, mb_per_s, pydicom_read_per_s,
orthanc_instances_per_s, ratio_vs_orthanc (null with orthanc_reason when Orthanc cannot run),
deid_files_per_s and dicognito_files_per_s.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import bench_organizations, print_result, setup_django, use_bench_database  # noqa: E402


def make_series(folder: Path, slices: int) -> list[Path]:
    from core.dicom import synthetic

    datasets = synthetic.make_ct_series(n_slices=slices, rows=512, cols=512, seed=1)
    return synthetic.write_series(datasets, folder)


def time_pydicom(paths: list[Path]) -> float:
    import pydicom

    start = time.perf_counter()
    for path in paths:
        pydicom.dcmread(path).PixelData  # noqa: B018 - read to the end of the file
    return len(paths) / (time.perf_counter() - start)


def time_radqueue(paths: list[Path]) -> tuple[float, float]:
    from core.dicom.ingest import IngestItem, ingest_files
    from core.dicom.models import Instance
    from core.models import Project

    vendor, client = bench_organizations()
    project = Project.objects.create(name=f"ingest bench {time.time_ns()}", client=client, vendor=vendor,
                                     modalities=["CT"])
    total_bytes = sum(p.stat().st_size for p in paths)
    items = (IngestItem(p.name, path=str(p), size=p.stat().st_size) for p in paths)
    start = time.perf_counter()
    # As `manage.py ingest` runs it: parsing and de-identification in one process per core.
    report = ingest_files(project, items, by=None, source="folder", workers=os.cpu_count() or 1)
    elapsed = time.perf_counter() - start
    assert report.accepted == len(paths), report.as_dict()["files"][:3]
    assert Instance.objects.filter(project=project).count() == len(paths)
    return len(paths) / elapsed, total_bytes / elapsed / 1e6


def time_orthanc(paths: list[Path]) -> tuple[float | None, str]:
    from bench import orthanc

    reason = orthanc.unavailable_reason()
    if reason:
        return None, reason
    payloads = [p.read_bytes() for p in paths]
    try:
        with orthanc.running_orthanc() as url:
            orthanc.upload(url, payloads[0])  # warm up: first request opens the index
            start = time.perf_counter()
            for data in payloads[1:]:
                answer = orthanc.upload(url, data)
                assert answer.get("Status") in ("Success", "AlreadyStored"), answer
            return (len(payloads) - 1) / (time.perf_counter() - start), ""
    except RuntimeError as exc:
        return None, str(exc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="60 slices instead of 300")
    args = parser.parse_args()
    slices = 60 if args.quick else 300
    use_bench_database("radqueue_bench_ingest")
    setup_django()
    from bench.deid_compare import measure, test_files

    with tempfile.TemporaryDirectory(prefix="radqueue-ingest-bench-") as folder:
        paths = make_series(Path(folder), slices)
        size_mb = sum(p.stat().st_size for p in paths) / 1e6
        print(f"series: {slices} slices of 512x512 CT, {size_mb:.1f} MB")
        for path in paths:  # page cache, so both sides read from memory
            path.read_bytes()
        pydicom_rate = time_pydicom(paths)
        print(f"pydicom.dcmread alone:      {pydicom_rate:8.1f} files/s")
        rate, mb_rate = time_radqueue(paths)
        print(f"radqueue ingest (whole path): {rate:6.1f} instances/s, {mb_rate:.1f} MB/s")
        orthanc_rate, reason = time_orthanc(paths)
        if orthanc_rate is None:
            print(f"Orthanc: not measured ({reason})")
        else:
            print(f"Orthanc REST ingest:        {orthanc_rate:8.1f} instances/s")
    deid = measure(test_files(), rounds=1 if args.quick else 3)
    print(f"de-identification on pydicom's test files: radqueue {deid['deid_files_per_s']:.1f} files/s, "
          f"dicognito {deid['dicognito_files_per_s']:.1f} files/s")
    result = {
        "slices": slices,
        "instances_per_s": round(rate, 1),
        "mb_per_s": round(mb_rate, 1),
        "pydicom_read_per_s": round(pydicom_rate, 1),
        "orthanc_instances_per_s": round(orthanc_rate, 1) if orthanc_rate else None,
        "ratio_vs_orthanc": round(rate / orthanc_rate, 2) if orthanc_rate else None,
        "deid_files_per_s": round(deid["deid_files_per_s"], 1),
        "dicognito_files_per_s": round(deid["dicognito_files_per_s"], 1),
    }
    if orthanc_rate is None:
        result["orthanc_reason"] = reason
    print_result(result)


if __name__ == "__main__":
    main()
