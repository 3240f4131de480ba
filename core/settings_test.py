"""Test settings: the same settings, with fast password hashing and an isolated data folder."""

import os
import tempfile

from core.settings import *  # noqa: F403
from core.settings import DATABASES

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# A server a test starts (tests/servers.py) shares the test process's folder, as it shares its
# database: the objects a test stored are the ones the server reads.
DATA_DIR = Path(os.environ.get("RADQUEUE_TEST_DATA_DIR") or tempfile.mkdtemp(prefix="radqueue-test-"))  # noqa: F405
# Tests close connections after each request; a server a test starts as deploy/ runs it (tests/
# servers.py) keeps them, with RADQUEUE_TEST_SERVER_CONN_MAX_AGE set.
DATABASES["default"]["CONN_MAX_AGE"] = int(os.environ.get("RADQUEUE_TEST_SERVER_CONN_MAX_AGE", "0"))
STATIC_ROOT = DATA_DIR / "static"
# pytest-django runs tests with DEBUG off while WHITENOISE_USE_FINDERS kept the value DEBUG had on
# import: WhiteNoise then walked every app's static files each time a test client built its
# handler (about 70 ms, most API tests build several). Looking files up per request instead, as
# WhiteNoise does in development, serves the same files.
WHITENOISE_AUTOREFRESH = True
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
# Jobs run in-process; a server a test starts to see Celery's broker fail (tests/reliability/test_outages.py)
# queues them in Redis as production does, with RADQUEUE_TEST_SERVER_CELERY_EAGER=0.
CELERY_TASK_ALWAYS_EAGER = os.environ.get("RADQUEUE_TEST_SERVER_CELERY_EAGER", "1") != "0"
LOGGING = {"version": 1, "disable_existing_loggers": False, "root": {"level": "WARNING"}}
