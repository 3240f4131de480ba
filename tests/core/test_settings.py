"""Production mode is DEBUG off: `check --deploy` is clean, and a missing secret stops the process."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROD = {
    "DEBUG": "0",
    "SECRET_KEY": "x7!k2#p9@q4$w8%e1^r6&t3*y0(u5)i-o=pLmNbVcXzAsDfGhJkL_qWeRtYuIoP",
    "ALLOWED_HOSTS": "radqueue.example.com",
    "RADQUEUE_STORAGE_KEY": "k1:MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=",
    "DJANGO_SETTINGS_MODULE": "core.settings",
}


def _manage(*args, env):
    # The test's own PostgreSQL (DATABASE_URL, and PGHOST for the embedded one) stays: settings need one.
    base = {k: v for k, v in os.environ.items() if k not in PROD}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env={**base, **env},
                          capture_output=True, text=True, timeout=120)


def test_check_deploy_passes_with_no_warnings_in_production_mode_once_static_files_are_collected(tmp_path):
    env = {**PROD, "RADQUEUE_DATA_DIR": str(tmp_path)}
    missing = _manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert missing.returncode != 0 and "collectstatic" in missing.stderr + missing.stdout
    collected = _manage("collectstatic", "--noinput", env=env)
    assert collected.returncode == 0, collected.stderr
    result = _manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "no issues" in result.stdout


def test_production_refuses_to_start_without_a_secret_key():
    env = {**PROD, "SECRET_KEY": ""}
    result = _manage("check", env=env)
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr


def test_production_refuses_to_start_without_a_storage_key():
    env = {**PROD, "RADQUEUE_STORAGE_KEY": ""}
    result = _manage("check", env=env)
    assert result.returncode != 0
    assert "RADQUEUE_STORAGE_KEY is not set" in result.stderr


def test_a_malformed_database_url_fails_loudly():
    result = _manage("check", env={"DATABASE_URL": "notascheme://x", "DJANGO_SETTINGS_MODULE": "core.settings"})
    assert result.returncode != 0


def test_password_hashing_is_argon2_in_the_real_settings():
    result = _manage("shell", "-c", "from django.conf import settings; print(settings.PASSWORD_HASHERS[0])",
                     env={"DJANGO_SETTINGS_MODULE": "core.settings"})
    assert result.stdout.strip().splitlines()[-1] == "django.contrib.auth.hashers.Argon2PasswordHasher", result.stderr
