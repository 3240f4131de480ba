"""`manage.py check --deploy` refuses what would pass it and then fail at the first request."""

import base64

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError


def _deploy_check():
    call_command("check", deploy=True, fail_level="ERROR", tags=["security", "staticfiles"])


def test_a_storage_key_of_five_bytes_fails_the_deploy_check_without_showing_it(settings):
    short = base64.b64encode(b"12345").decode()
    settings.RADQUEUE_STORAGE_KEYS = f"k1:{short}"
    with pytest.raises(SystemCheckError) as raised:
        _deploy_check()
    message = str(raised.value)
    assert "radqueue.E001" in message and "decodes to 5 bytes" in message
    assert short not in message


def test_a_32_byte_storage_key_passes(settings, tmp_path):
    settings.RADQUEUE_STORAGE_KEYS = "k1:" + base64.b64encode(bytes(range(32))).decode()
    settings.DEBUG = True
    call_command("check", deploy=True, tags=["security"], fail_level="CRITICAL")
    from core.checks import storage_keys_usable
    assert storage_keys_usable(None) == []


def test_production_without_collected_static_files_fails_the_deploy_check(settings, tmp_path):
    settings.DEBUG = False
    settings.STATIC_ROOT = tmp_path / "static"
    settings.STORAGES = {**settings.STORAGES, "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"}}  # production's
    from core.checks import static_files_collected
    errors = static_files_collected(None)
    assert [e.id for e in errors] == ["radqueue.E002"] and "collectstatic" in errors[0].hint
    call_command("collectstatic", interactive=False, verbosity=0)
    assert static_files_collected(None) == []
