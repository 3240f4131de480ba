"""System checks for a production deploy (`manage.py check --deploy`): what would otherwise pass
the check and fail only at the first request that needs it."""

from pathlib import Path

from django.conf import settings
from django.core.checks import Error, Tags, register


@register(Tags.security, deploy=True)
def storage_keys_usable(app_configs, **kwargs):
    # The key ring is parsed lazily, at the first stored or read object; a key of the wrong length
    # would otherwise pass the deploy check and fail the first upload.
    from core.dicom.crypto import KeyRing

    try:
        KeyRing.from_setting(settings.RADQUEUE_STORAGE_KEYS)
    except ValueError as exc:  # the message names entries and key ids only, never key bytes
        return [Error(str(exc), hint="Set RADQUEUE_STORAGE_KEYS to keyid:base64-of-32-random-bytes.",
                      id="radqueue.E001")]
    return []


@register(Tags.staticfiles, deploy=True)
def static_files_collected(app_configs, **kwargs):
    # Under DEBUG=0 WhiteNoise's manifest storage answers 500 on any page with a static file
    # (the admin login, the API docs) until collectstatic has written its manifest.
    if settings.DEBUG:
        return []
    manifest = Path(settings.STATIC_ROOT) / "staticfiles.json"
    if manifest.is_file():
        return []
    return [Error(f"static files are not collected: {manifest} is missing",
                  hint="Run `python manage.py collectstatic --noinput` as part of every release, "
                       "beside `migrate` (deploy/README.md).", id="radqueue.E002")]
