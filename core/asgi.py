"""ASGI entry point: HTTP through Django, websockets (the live feed) through channels."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from core.websocket_auth import FeedAuthStack  # noqa: E402
from tasks.websocket_urls import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter({
    "http": django_asgi_app,
    # Browsers send Origin: only pages served from ALLOWED_HOSTS may open a socket (and other
    # clients must send a matching Origin header too).
    "websocket": AllowedHostsOriginValidator(FeedAuthStack(URLRouter(websocket_urlpatterns))),
})
