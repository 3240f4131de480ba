import gc
import os

from django.core.wsgi import get_wsgi_application
from django.db import connections
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")
application = get_wsgi_application()

# Import every URL module (and with them the API's modules, numpy and scipy included) now rather
# than on a worker's first request, which took over a second of CPU while it served readers.
# Under `gunicorn --preload` (deploy/) the master does it once and every worker forks warm; no
# database connection may cross the fork, so none is left open here.
get_resolver().url_patterns  # noqa: B018 - the attribute's import is the point
connections.close_all()
# Everything imported so far lives as long as the process: move it out of the collector's
# generations, so a worker's full collections no longer walk the whole module graph (numpy,
# scipy, Django, DRF) on the request path, and forked workers keep sharing those pages instead
# of copying them when the collector touches their headers.
gc.freeze()
