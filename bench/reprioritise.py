"""Re-prioritising the queue while readers claim: learning.scoring's batched apply against one
big UPDATE, measured by the claim rate of concurrent pgbench clients.

    .venv/bin/python bench/reprioritise.py [--quick]

Uses DATABASE_URL (default postgres://postgres@127.0.0.1:5432/radqueue_bench_reprioritise; the name
must contain "bench"). Seeds 100,000 tasks with k = 2 (--quick: 20,000) the way bench/claims.py does,
stages one TaskScore per task (a new priority for each, from a fixed random uncertainty), then for each
mode: pgbench (4 connections) runs tasks.queue's claim statement for a baseline window and on
until the priorities are applied; the queue is reset between modes.

Modes: ``batched`` = learning.scoring.apply_scores (batches of 5,000 tasks, each its own
transaction, UPDATE ... FROM (VALUES ...) on slots, tasks and adjudications); ``one_statement`` =
the same UPDATE for every task at once (the peer the issue measured: -93% claims for 6 s).
``claims_during_vs_baseline`` = claims/s while applying / claims/s of the baseline window;
``worst_second_vs_baseline`` = the worst one-second claim rate while applying / baseline.
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import print_result, setup_django, use_bench_database  # noqa: E402

CLIENTS = 4


class Claimers:
    """pgbench claiming with a per-second progress report, until stopped; ``per_second`` = [(t, tps)]."""

    def __init__(self, script: str, first_reader: int):
        self.file = tempfile.NamedTemporaryFile("w", suffix=".sql", prefix="reprio-")  # noqa: SIM115
        self.file.write(f"\\set reader {first_reader} + :client_id\n{script}\n")
        self.file.flush()
        self.per_second: list[tuple[float, float]] = []
        self.started = time.time()
        self.proc = subprocess.Popen(["pgbench", "-n", "-M", "simple", "-c", str(CLIENTS), "-j", "2", "-P", "1",
                                      "-T", "3600", "-f", self.file.name, os.environ["DATABASE_URL"]],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.reader = threading.Thread(target=self._read)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            match = re.search(r"progress: ([\d.]+) s, ([\d.]+) tps", line)
            if match:
                self.per_second.append((float(match.group(1)), float(match.group(2))))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait()
        self.reader.join()
        self.file.close()


def stage(project, tasks: int):
    from learning.models import LearningJob, ModelVersion, TaskScore
    from tasks.models import Task

    job = LearningJob.objects.create(project=project, kind="score", state="applying")
    version, _ = ModelVersion.objects.get_or_create(
        project=project, number=1, defaults={"architecture": "bench", "label_key": "bench", "weights_object": "x",
                                             "weights_sha256": "0", "decision_reason": "bench"})
    rng = np.random.default_rng(7)
    ids = list(Task.objects.filter(project=project).order_by("id").values_list("id", flat=True))
    u = rng.random(len(ids))
    TaskScore.objects.bulk_create([TaskScore(task_id=t, model_version=version, job=job, uncertainty=float(x),
                                             strategy="entropy", probabilities=[], priority_before=0.0,
                                             priority_after=round(float(x) + 0.25, 6))
                                   for t, x in zip(ids, u, strict=True)], batch_size=5000)
    return job


def run_mode(mode: str, project, readers, tasks: int, before_s: float) -> dict:
    from django.db import connection

    from bench.claims import claim_statement, reset_queue
    from learning import scoring
    from learning.models import LearningJob, TaskScore
    from tasks.locks import AdvisoryLock

    with connection.cursor() as cursor:
        cursor.execute("UPDATE tasks_task SET priority = 0 WHERE project_id = %s", [project.pk])
        cursor.execute("UPDATE tasks_queueslot SET priority = 0 WHERE project_id = %s", [project.pk])
    TaskScore.objects.all().delete()
    LearningJob.objects.all().delete()
    reset_queue(project)
    job = stage(project, tasks)
    claim = claim_statement(project, readers[0])
    script = f"BEGIN;\nSELECT pg_advisory_xact_lock({int(AdvisoryLock.CLAIM)}, :reader);\n{claim};\nCOMMIT;"
    claimers = Claimers(script, readers[0].pk)
    time.sleep(before_s)
    t0 = time.time()
    if mode == "batched":
        scoring.apply_scores(job)
    else:
        scores = list(TaskScore.objects.filter(job=job).order_by("id"))
        scoring._set_priorities([(s.task_id, s.priority_after, None) for s in scores])
    t1 = time.time()
    time.sleep(1.5)
    claimers.stop()
    rel0, rel1 = t0 - claimers.started, t1 - claimers.started
    base = [tps for t, tps in claimers.per_second if 1.0 < t <= rel0]
    during = [tps for t, tps in claimers.per_second if rel0 + 1.0 <= t <= rel1 + 0.5] or \
        [tps for t, tps in claimers.per_second if t > rel0][:1]
    baseline = float(np.mean(base)) if base else float("nan")
    applied = TaskScore.objects.filter(job=job).count()
    print(f"  {mode:13s}: applied {applied} priorities in {t1 - t0:.2f} s; claims/s baseline {baseline:.0f}, "
          f"while applying {np.mean(during):.0f} (worst second {min(during):.0f})")
    return {"apply_s": round(t1 - t0, 2), "baseline_claims_per_s": round(baseline, 1),
            "claims_during_per_s": round(float(np.mean(during)), 1),
            "claims_during_vs_baseline": round(float(np.mean(during)) / baseline, 3),
            "worst_second_vs_baseline": round(min(during) / baseline, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20,000 tasks, under a minute.")
    args = parser.parse_args()
    tasks = 20_000 if args.quick else 100_000
    use_bench_database("radqueue_bench_reprioritise")
    setup_django()
    from bench.claims import prepare, seed

    project, version, readers, _ = prepare()
    seed(project, version, tasks)
    print(f"seeded {tasks} tasks (k = 2); pgbench {CLIENTS} connections claiming throughout")
    before_s = 4 if args.quick else 6
    result = {"tasks": tasks, "batch_rows": 5000}
    for mode in ("batched", "one_statement"):
        result[mode] = run_mode(mode, project, readers, tasks, before_s)
    print_result(result)


if __name__ == "__main__":
    main()
