"""core.settings with shorter clocks, for bench/faults.py only: every process it starts (web, jobs, beat)
runs on these, so that a run of minutes sees the sweeps act. Nothing else differs from core.settings.

FAULTS_SWEEP_SECONDS: how often beat runs the lease, learning-job and batch-build sweeps (production:
60, 300 and 600 s). FAULTS_BATCH_BUILD_TIMEOUT: seconds before a build counts as lost; core.settings
refuses less than 600 from the environment (a real build of many studies takes minutes), this module
sets it after that check. The build job's soft limit stays 120 s below it (tasks.jobs), so keep it
above 120 plus the time the bench's build takes.
"""

import os

from core.settings import *  # noqa: F403 - the production settings, then the clocks below
from core.settings import CELERY_BEAT_SCHEDULE

_SWEEP_SECONDS = float(os.environ.get("FAULTS_SWEEP_SECONDS", "10"))
_SWEEPS = ("sweep-expired-leases", "learning-sweep-stale-jobs", "fail-stale-batch-builds")

CELERY_BEAT_SCHEDULE = {name: {**entry, "schedule": min(entry["schedule"], _SWEEP_SECONDS)} if name in _SWEEPS
                        else entry for name, entry in CELERY_BEAT_SCHEDULE.items()}
BATCH_BUILD_TIMEOUT = int(os.environ.get("FAULTS_BATCH_BUILD_TIMEOUT", "150"))
