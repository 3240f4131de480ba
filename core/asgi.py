"""ASGI entry point: HTTP through Django, websockets (the live feed) through channels."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")
django_asgi_app = get_asgi_application()

import importlib  # noqa: E402

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402

from core.websocket_auth import BrowserOriginValidator, FeedAuthStack  # noqa: E402

websocket_urlpatterns = importlib.import_module(settings.WEBSOCKET_URLCONF).websocket_urlpatterns

application = ProtocolTypeRouter({
    "http": django_asgi_app,
    # Only the site's own pages (scheme, host and port) may open a socket; token clients without
    # Origin may too.
    "websocket": BrowserOriginValidator(FeedAuthStack(URLRouter(websocket_urlpatterns))),
})
