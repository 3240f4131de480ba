"""Delivery export benchmark: build every export of a batch (JSON, SEG, SR, NIfTI, CSV, manifest) and
stream the files back, next to the floor of reading and decoding the same source instances.

    .venv/bin/python bench/exports.py [--quick]

Uses DATABASE_URL (default postgres://postgres@127.0.0.1:5432/radqueue_bench_exports; created if
missing, migrated on every run). The name must contain "bench": each run empties the task, read,
study, batch and audit tables. In this order:

1. Seed: N CT studies (default 40 of 64 slices of 256x256; --quick: 8 of 32 slices of 128x128)
   through the real ingest path (de-identification, encrypted store), one task each (k = 2), both
   reads submitted through tasks.queue with the same findings (a mask of about 5% of the voxels, a
   box, a point, a laterality), so every task reaches consensus.
2. Delivery: tasks.batches.deliver_batch of one batch with every task; the export job runs eagerly
   after the commit, so the time is delivery + concordance report + every export file.
3. A rebuild (tasks.batches.build_batch_exports) timed alone, next to the floor: reading
   every source instance from the encrypted store and decoding its pixels (pydicom), which any
   export built from the sources must do at least once.
4. Downloads: every file through DRF's test client as the client user (token auth, audit, the
   streamed response), next to reading the same objects straight from the store.
5. Exactness: every download's SHA-256 equals the manifest's; every source UID the SEGs reference
   is an ingested instance. Exit status 1 otherwise.

Human-readable lines, then one JSON line (tasks, build_s, build_per_task_s, floor_s, ...).
"""

import argparse
import hashlib
import io
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import bench_organizations, print_result, reset_audit_trail, setup_django, use_bench_database  # noqa: E402

TABLES = ("tasks_queueslot", "tasks_read", "tasks_consensus", "tasks_adjudication", "tasks_task", "tasks_batch",
          "core_deidrecord", "core_pseudonymmapentry", "core_instance", "core_series", "core_study",
          "core_ingestbatch", "tasks_tasktally", "tasks_tasktallydelta", "tasks_readdaytally", "tasks_readdaydelta",
          "tasks_findingtally", "tasks_uncountedconsensus")  # the progress tallies, where they exist


def prepare():
    from django.db import connection, transaction

    from core.memberships import grant_membership
    from core.models import Project, User
    from core.protocols import create_protocol_version

    with transaction.atomic(), connection.cursor() as cursor:
        existing = set(connection.introspection.table_names(cursor))
        cursor.execute(f"TRUNCATE {', '.join(t for t in TABLES if t in existing)} RESTART IDENTITY CASCADE")
        reset_audit_trail(cursor)
    vendor, client = bench_organizations()
    project, _ = Project.objects.get_or_create(name="Exports bench", client=client,
                                               defaults={"vendor": vendor, "modalities": ["CT"]})
    if project.current_protocol_version() is None:
        create_protocol_version(project=project, name="Exports bench", template="generic_findings")
    users = {}
    for name, role, org in [("manager", "manager", vendor), ("a1", "annotator", vendor), ("a2", "annotator", vendor),
                            ("client", "client", client)]:
        user, _ = User.objects.get_or_create(username=f"bench-exports-{name}", defaults={"organization": org})
        grant_membership(project=project, user=user, role=role)
        users[name] = user
    return project, users


def seed(project, users, studies: int, slices: int, size: int) -> list:
    import numpy as np

    from core.dicom import synthetic
    from core.dicom.ingest import IngestItem, ingest_files
    from core.dicom.models import Instance
    from tasks.creation import create_tasks
    from tasks.findings.masks import rle_encode
    from tasks.queue import claim_next_read
    from tasks.reads import submit_read

    for n in range(studies):
        datasets = synthetic.make_ct_series(n_slices=slices, rows=size, cols=size, seed=1000 + n,
                                            patient={"name": f"BENCH^{n}", "id": f"B{n}"})
        ingest_files(project, [IngestItem(str(i), reader=io.BytesIO(synthetic.to_bytes(d)))
                               for i, d in enumerate(datasets)], by=None, source="folder")
    tasks = create_tasks(project, by=users["manager"])
    mask = np.zeros((slices, size, size), dtype=bool)
    c, r = size // 2, max(2, int(size * 0.18))
    mask[slices // 4: 3 * slices // 4, c - r: c + r, c - r: c + r] = True
    rle = rle_encode(mask)
    for _ in tasks:
        for reader in (users["a1"], users["a2"]):
            read = claim_next_read(reader).read
            instances = list(Instance.objects.filter(series__study=read.task.study).order_by("instance_number"))
            series_uid = instances[0].series.series_uid
            findings = [
                {"label": "pneumothorax", "mask": {"series_uid": series_uid, "shape": [slices, size, size],
                                                   "rle": rle}},
                {"label": "fracture", "bbox": {"sop_instance_uid": instances[slices // 2].sop_instance_uid,
                                               "x0": 10, "y0": 12, "x1": 40, "y1": 44}},
                {"label": "carina", "point": {"sop_instance_uid": instances[1].sop_instance_uid, "x": 20.5,
                                              "y": 30.5}},
                {"label": "finding_laterality", "value": "left"},
            ]
            submit_read(read.pk, reader, findings)
    return tasks


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    studies, slices, size = (8, 32, 128) if args.quick else (40, 64, 256)
    use_bench_database("radqueue_bench_exports")
    setup_django()

    import pydicom
    from django.conf import settings
    from rest_framework.test import APIClient

    from core.dicom.models import Instance
    from core.dicom.storage import get_store
    from tasks.batches import build_batch_exports, create_batch, deliver_batch
    from tasks.models import Batch, Task

    settings.CELERY_TASK_ALWAYS_EAGER = True
    project, users = prepare()
    started = time.perf_counter()
    tasks = seed(project, users, studies, slices, size)
    print(f"seeded {len(tasks)} consensus tasks of {slices} x {size}x{size} in {time.perf_counter() - started:.1f} s")
    assert Task.objects.filter(pk__in=[t.pk for t in tasks], state="consensus").count() == len(tasks)

    batch = create_batch(project, name=f"bench {time.time():.0f}", by=users["manager"],
                         task_ids=[t.pk for t in tasks])
    started = time.perf_counter()
    deliver_batch(batch, by=users["manager"])  # autocommit: the eager job runs when this returns
    deliver_s = time.perf_counter() - started
    batch = Batch.objects.get(pk=batch.pk)
    if batch.export_state != "ready":
        print(f"exports failed: {batch.export_error}")
        return 1
    print(f"deliver + report + exports: {deliver_s:.2f} s")

    started = time.perf_counter()
    batch = build_batch_exports(batch.pk)
    build_s = time.perf_counter() - started
    store = get_store()
    voxels = 0
    started = time.perf_counter()
    for name in Instance.objects.filter(series__study__tasks__batch=batch).values_list("storage_name", flat=True):
        voxels += pydicom.dcmread(io.BytesIO(store.read_bytes(name))).pixel_array.size
    floor_s = time.perf_counter() - started
    print(f"rebuild exports: {build_s:.2f} s ({build_s / len(tasks):.3f} s per task); floor (read + decode "
          f"sources): {floor_s:.2f} s; ratio {build_s / floor_s:.1f}x")

    client = APIClient()
    client.force_authenticate(users["client"])
    manifest = json.loads(store.read_bytes(next(e["object"] for e in batch.exports if e["name"] == "manifest.json")))
    expected = {f["name"]: f["sha256"] for f in manifest["files"]}
    total, bad = 0, 0
    started = time.perf_counter()
    for entry in batch.exports:
        response = client.get(f"/api/projects/{project.pk}/batches/{batch.pk}/exports/{entry['name']}/")
        data = b"".join(response.streaming_content)
        total += len(data)
        if entry["name"] in expected and hashlib.sha256(data).hexdigest() != expected[entry["name"]]:
            bad += 1
    download_s = time.perf_counter() - started
    started = time.perf_counter()
    for entry in batch.exports:
        store.read_bytes(entry["object"])
    store_s = time.perf_counter() - started
    import highdicom as hd

    ingested = set(Instance.objects.filter(project=project).values_list("sop_instance_uid", flat=True))
    unresolved = 0
    for entry in batch.exports:
        if entry["format"] == "dicom-seg":
            seg = hd.seg.segread(io.BytesIO(store.read_bytes(entry["object"])))
            unresolved += len({uid for _, _, uid in seg.get_source_image_uids()} - ingested)
    mb = total / 1e6
    print(f"downloads: {len(batch.exports)} files, {mb:.1f} MB in {download_s:.2f} s ({mb / download_s:.1f} MB/s); "
          f"store reads of the same: {store_s:.2f} s ({mb / store_s:.1f} MB/s)")
    print(f"checksum mismatches: {bad}; SEG source UIDs not ingested: {unresolved}")
    print_result({"tasks": len(tasks), "slices": slices, "matrix": size, "deliver_s": round(deliver_s, 3),
                  "build_s": round(build_s, 3), "build_per_task_s": round(build_s / len(tasks), 4),
                  "floor_s": round(floor_s, 3), "build_vs_floor": round(build_s / floor_s, 2),
                  "files": len(batch.exports), "mb": round(mb, 2), "download_mb_s": round(mb / download_s, 1),
                  "store_read_mb_s": round(mb / store_s, 1), "checksum_mismatches": bad,
                  "unresolved_uids": unresolved})
    return 1 if bad or unresolved else 0


if __name__ == "__main__":
    sys.exit(main())
