"""radqueue settings, read from the environment (django-environ parses URLs and fails loudly).

Development default (nothing set): the embedded PostgreSQL that `make run` / `make test` start, an
in-memory channel layer, local-memory cache and in-process jobs. Production sets DATABASE_URL, REDIS_URL, SECRET_KEY,
ALLOWED_HOSTS and DEBUG=0; nothing here exists only in production.
"""

import base64
import os
import re
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

DEBUG = env.bool("DEBUG", default=True)

_DEV_SECRET = "radqueue-development-only-secret-key-do-not-use-in-production-0123456789"
SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. With DEBUG=0 radqueue refuses to start without a secret key: "
            "set SECRET_KEY to a random string of at least 50 characters."
        )
    SECRET_KEY = _DEV_SECRET

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# Where radqueue keeps its files (encrypted DICOM, exports, model weights); never plaintext.
DATA_DIR = Path(env.str("RADQUEUE_DATA_DIR", default=str(BASE_DIR / "var")))

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "knox",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "guardian",
    "channels",
    "corsheaders",
    "core",
    "audit",
    "tasks",
    "learning",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "core.middleware.RequestIdMiddleware",
    "core.middleware.OutageMiddleware",  # a view that met a database or cache outage: 503, Retry-After
    "core.middleware.NulInQueryMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "core.urls"
# The live feed's websocket routes, named as ROOT_URLCONF names the HTTP ones (core imports no app).
WEBSOCKET_URLCONF = "tasks.websocket_urls"
WSGI_APPLICATION = "core.wsgi.application"
ASGI_APPLICATION = "core.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

# --- Database -------------------------------------------------------------------------------
# PostgreSQL is the only database. Without DATABASE_URL, the embedded server that `make run` and
# `make test` start (core/postgresql/embedded.py) is used while it runs.
if not env.str("DATABASE_URL", default=""):
    from core.postgresql import embedded

    _socket = embedded.running()
    if _socket is None:
        raise ImproperlyConfigured(
            "DATABASE_URL is not set and the embedded PostgreSQL is not running: set DATABASE_URL, or run "
            "through `make run` / `make test`, or `.venv/bin/python -m core.postgresql.embedded run -- <command>`")
    os.environ.update(embedded.environment(_socket))
DATABASES = {"default": env.db("DATABASE_URL")}
# 0 by default: under ASGI every request runs in its own thread-sensitive context, so a
# persistent connection is never reused and never closed, and workers would exhaust the
# server's connections (Django's docs: disable persistent connections under ASGI; use a
# pooler such as PgBouncer). A WSGI deployment may set DB_CONN_MAX_AGE.
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DB_CONN_MAX_AGE", default=0))
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"] not in ("django.db.backends.postgresql", "core.postgresql"):
    raise ImproperlyConfigured(f"DATABASE_URL must name a PostgreSQL server (postgres://...), not "
                               f"{DATABASES['default']['ENGINE']}")
# The same backend, with a health check that asks the socket instead of the server
# (core/postgresql/base.py): no SELECT 1 round trip before every request.
DATABASES["default"]["ENGINE"] = "core.postgresql"
ATOMIC_REQUESTS = False
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: cache, channel layer, Celery ----------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
    # A socket's receive is a BZPOPMIN that Redis answers after 5 s (channels_redis' brpop_timeout)
    # when nothing came; redis-py 8 stops reading a socket after 5 s by default, so every idle feed
    # socket failed with "Timeout reading from" and dropped (django/channels_redis#422). The read
    # timeout must outlast the pop; finite, so that a Redis that stopped answering is still noticed.
    CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                    "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 15, "socket_connect_timeout": 5}]}}
    }
    CELERY_BROKER_URL = REDIS_URL
    CELERY_RESULT_BACKEND = REDIS_URL
    CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CELERY_BROKER_URL = "memory://"
    CELERY_TASK_ALWAYS_EAGER = True
CELERY_TASK_EAGER_PROPAGATES = True
# Model jobs (training, scoring, pre-annotation) go to their own queue, which GPU workers consume
# (deploy/: `celery -A core worker -Q learning`); everything else to the default queue.
CELERY_TASK_ROUTES = {"learning.run_job": {"queue": "learning"}}
CELERY_BEAT_SCHEDULE = {
    "sweep-expired-leases": {"task": "tasks.sweep_expired_leases", "schedule": 60.0},
    "purge-expired-tokens": {"task": "core.purge_expired_tokens", "schedule": 3600.0},
    "learning-sweep-stale-jobs": {"task": "learning.sweep_stale_jobs", "schedule": 300.0},
    "learning-scheduled-training": {"task": "learning.start_scheduled_training", "schedule": 600.0},
    "fail-stale-batch-builds": {"task": "tasks.fail_stale_batch_builds", "schedule": 600.0},
    "audit-anchor-heads": {"task": "audit.anchor_heads", "schedule": 3600.0},
}
# Seconds a batch's delivery build (report and exports) may take from being asked for, or taken by a
# worker, before it counts as lost and is marked failed (tasks.batches). The build job's own time
# limit sits just below it, so a build marked failed is no longer writing files.
BATCH_BUILD_TIMEOUT = env.int("BATCH_BUILD_TIMEOUT", default=3 * 3600)
if BATCH_BUILD_TIMEOUT < 600:
    raise ImproperlyConfigured(f"BATCH_BUILD_TIMEOUT is {BATCH_BUILD_TIMEOUT}: give a delivery build at least 600 "
                               "seconds (the build job stops 60 s before it).")
# The model behind learning's jobs (learning.predictors); tests plug in a numpy stand-in.
LEARNING_PREDICTOR = env.str("LEARNING_PREDICTOR", default="learning.predictors.MonaiPredictor")
# Seconds: a running learning job silent this long is swept (reverted, failed); a queued one no
# worker took this long is failed (learning.runs).
LEARNING_JOB_HEARTBEAT_TIMEOUT = env.int("LEARNING_JOB_HEARTBEAT_TIMEOUT", default=15 * 60)
LEARNING_JOB_QUEUED_TIMEOUT = env.int("LEARNING_JOB_QUEUED_TIMEOUT", default=6 * 3600)
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=6 * 3600)

# --- Auth -----------------------------------------------------------------------------------
AUTH_USER_MODEL = "core.User"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
ANONYMOUS_USER_NAME = None  # guardian: no anonymous object permissions
GUARDIAN_RAISE_403 = False
LOGIN_URL = "admin:login"

# Failed logins allowed per username and per client address in LOGIN_THROTTLE_WINDOW seconds.
LOGIN_THROTTLE_ATTEMPTS = env.int("LOGIN_THROTTLE_ATTEMPTS", default=5)
LOGIN_THROTTLE_WINDOW = env.int("LOGIN_THROTTLE_WINDOW", default=300)

REST_KNOX = {
    "TOKEN_TTL": __import__("datetime").timedelta(hours=env.int("API_TOKEN_TTL_HOURS", default=12)),
    "AUTO_REFRESH": False,
    "AUTH_HEADER_PREFIX": "Token",
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "core.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "core.api.pagination.Pagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "core.schema.AutoSchema",  # operation descriptions from own docstrings only
    "EXCEPTION_HANDLER": "core.errors.exception_handler",
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_THROTTLE_RATES": {"login": env.str("LOGIN_RATE", default="20/min")},
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "radqueue API",
    "DESCRIPTION": (
        "Clinical-grade radiology annotation: organisations, projects, people and roles, "
        "versioned label schemas, DICOM ingest and DICOMweb, reading queues, consensus, audit."
    ),
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Swagger UI assets are served locally (drf-spectacular-sidecar): the docs work offline.
    "ENUM_NAME_OVERRIDES": {
        "TierEnum": "core.roles.Tier",
        "RoleEnum": "core.roles.Role",
        "TaskStateEnum": "tasks.states.TaskState",
        "ReadStateEnum": "tasks.states.ReadState",
        "TaskKindEnum": "tasks.models.Task.Kind",
        "LabelKindEnum": "core.models.LabelEntry.Kind",
        "OrganizationKindEnum": "core.models.Organization.Kind",
        "PseudonymKindEnum": "core.dicom.models.PseudonymMapEntry.Kind",
        "LearningJobKindEnum": "learning.models.LearningJob.Kind",
        "LearningJobStateEnum": "learning.models.LearningJob.State",
    },
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "core.schema.document_common_errors"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

AUDIT_ENABLED = env.bool("AUDIT_ENABLED", default=True)
AUDIT_RETENTION_DAYS = env.int("AUDIT_RETENTION_DAYS", default=6 * 365)

# --- Security (production is DEBUG=0; the proxy header is configurable) ----------------------
_proxy_header = env.str("SECURE_PROXY_SSL_HEADER", default="HTTP_X_FORWARDED_PROTO")
SECURE_PROXY_SSL_HEADER = (_proxy_header, "https") if _proxy_header else None
# Client IPs are taken from this header only when it is set (the trusted reverse proxy's).
TRUSTED_PROXY_IP_HEADER = env.str("TRUSTED_PROXY_IP_HEADER", default="")
# How many proxies of ours stand in front and append to that header: the client is that many
# entries from the right (the entries left of it are the client's own, and spoofable).
TRUSTED_PROXY_HOPS = env.int("TRUSTED_PROXY_HOPS", default=1)
if TRUSTED_PROXY_HOPS < 1:
    raise ImproperlyConfigured("TRUSTED_PROXY_HOPS is the number of trusted proxies: 1 or more.")
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
SECURE_CONTENT_TYPE_NOSNIFF = True
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"

# Uploads stream to the handler in chunks; nothing is buffered whole (see core.dicom upload).
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", default=10 * 1024 * 1024)
FILE_UPLOAD_MAX_MEMORY_SIZE = 0

# Ingest limits: one file, one archive's inflated total, its compression ratio, its file count.
RADQUEUE_MAX_FILE_BYTES = env.int("RADQUEUE_MAX_FILE_BYTES", default=2 * 1024**3)
RADQUEUE_MAX_ZIP_TOTAL_BYTES = env.int("RADQUEUE_MAX_ZIP_TOTAL_BYTES", default=50 * 1024**3)
RADQUEUE_MAX_ZIP_RATIO = env.float("RADQUEUE_MAX_ZIP_RATIO", default=200.0)
RADQUEUE_MAX_ZIP_MEMBERS = env.int("RADQUEUE_MAX_ZIP_MEMBERS", default=100_000)
DATA_UPLOAD_MAX_NUMBER_FILES = env.int("DATA_UPLOAD_MAX_NUMBER_FILES", default=10_000)

# The address clients reach radqueue by (scheme, host, port and any path prefix a proxy adds), for
# the URLs DICOMweb writes into its bodies (RetrieveURL, BulkDataURI). Unset: from each request's Host
# header, which dicomweb-client sends without its port and a proxy may rewrite.
PUBLIC_BASE_URL = env.str("PUBLIC_BASE_URL", default="").rstrip("/")
if PUBLIC_BASE_URL and not re.fullmatch(r"https?://[^/?#\s]+(/[^?#\s]*)?", PUBLIC_BASE_URL):
    raise ImproperlyConfigured(f"PUBLIC_BASE_URL must be an http(s) URL such as https://radqueue.example.org, "
                               f"not {PUBLIC_BASE_URL!r}")

# CORS for browser viewers (OHIF) on another origin: DICOMweb and the API only.
CORS_ALLOWED_ORIGINS = env.list("CORS_ALLOWED_ORIGINS", default=[])
CORS_URLS_REGEX = r"^/(dicomweb|api)/.*$"
CORS_EXPOSE_HEADERS = ["Content-Type", "Content-Location", "Warning", "X-Request-ID"]

# --- Storage encryption ----------------------------------------------------------------------
# RADQUEUE_STORAGE_KEY: base64 of 32 bytes (AES-256), optionally "keyid:base64,keyid:base64"
# where the first is current and the rest stay readable for rotation.
_storage_key = env.str("RADQUEUE_STORAGE_KEY", default="")
if not _storage_key:
    if not DEBUG:
        raise ImproperlyConfigured(
            "RADQUEUE_STORAGE_KEY is not set. With DEBUG=0 radqueue refuses to start without a storage "
            "key: set it to the base64 of 32 random bytes (python -c \"import os,base64;"
            "print(base64.b64encode(os.urandom(32)).decode())\")."
        )
    _storage_key = "dev:" + base64.b64encode(b"radqueue-dev-storage-key-32bytes").decode()
RADQUEUE_STORAGE_KEYS = _storage_key

# --- Audit head anchors ----------------------------------------------------------------------
# audit_anchor signs a file of every chain head with this key (HMAC-SHA256) so audit_verify
# --anchor can tell a truncated or rewound chain from an intact one; keep the key and the files
# off the database host (docs/audit.md). Only DEBUG has a default; without DEBUG, anchoring and
# checking an anchor refuse to run until it is set (the web process does not need it to start).
# RADQUEUE_AUDIT_ANCHOR_DIR: where the hourly beat job writes anchors (unset: the job does nothing).
RADQUEUE_AUDIT_ANCHOR_KEY = env.str("RADQUEUE_AUDIT_ANCHOR_KEY", default="") or (
    "radqueue-dev-audit-anchor-key" if DEBUG else "")
RADQUEUE_AUDIT_ANCHOR_DIR = env.str("RADQUEUE_AUDIT_ANCHOR_DIR", default="")

# --- I18N / static --------------------------------------------------------------------------
LANGUAGE_CODE = "en-gb"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
# WhiteNoise serves static files from the ASGI process (the admin, the docs page's Swagger UI);
# in DEBUG straight from the apps, in production from `collectstatic` output.
WHITENOISE_USE_FINDERS = DEBUG
if DEBUG:
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # WhiteNoise expects it even when using finders
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage" if not DEBUG
                    else "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
