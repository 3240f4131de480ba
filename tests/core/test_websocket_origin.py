"""A browser's websocket is let in only from the site itself: its Origin must be the socket's own
scheme, host and port (the host one of ALLOWED_HOSTS), or one of CSRF_TRUSTED_ORIGINS. Through a
real uvicorn server, which sets the scheme from nginx's X-Forwarded-Proto as deploy/ runs it."""

import asyncio

import pytest
from knox.models import AuthToken
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.servers import asgi_servers

pytestmark = pytest.mark.django_db(transaction=True)  # the server reads the token the test committed


async def _opened(port: int, project: int, token: str, *, origin: str, headers: dict | None = None) -> bool:
    """True when the server accepted the socket and greeted it; False when it refused the handshake."""
    try:
        async with connect(f"ws://127.0.0.1:{port}/ws/projects/{project}/", origin=origin,
                           additional_headers=headers or {}, subprotocols=["radqueue", f"token.{token}"],
                           open_timeout=10) as socket:
            greeting = await asyncio.wait_for(socket.recv(), 10)
            assert '"feed.ready"' in greeting
            return True
    except InvalidStatus as refused:
        assert refused.response.status_code == 403
        return False


def test_a_socket_is_refused_from_another_scheme_or_port_and_accepted_from_the_site_itself(cast, tmp_path):
    token = AuthToken.objects.create(cast.manager)[1]
    env = {"ALLOWED_HOSTS": "127.0.0.1,radqueue.example.com", "CSRF_TRUSTED_ORIGINS": "https://viewer.example.com"}
    with asgi_servers(1, tmp_path, env=env) as (port,):
        def opened(origin, headers=None):
            return asyncio.run(_opened(port, cast.project.pk, token, origin=origin, headers=headers))

        site = f"http://127.0.0.1:{port}"
        assert opened(site)
        assert not opened(f"https://127.0.0.1:{port}"), "another scheme on the same host and port"
        assert not opened(f"http://127.0.0.1:{port + 1}"), "another port on the same host"
        assert not opened("http://127.0.0.1"), "the default port is another port"
        assert not opened(f"http://evil.example:{port}")
        assert not opened("null")

        # Behind nginx (TLS there, X-Forwarded-Proto https): the site is https on the public host.
        proxied = {"Host": "radqueue.example.com", "X-Forwarded-Proto": "https"}
        assert opened("https://radqueue.example.com", proxied)
        assert opened("https://radqueue.example.com:443", proxied)
        assert not opened("http://radqueue.example.com", proxied), "a plain-http page of the site"
        assert not opened("https://radqueue.example.com:8443", proxied)
        # An allowed host that is not the socket's own host is another site.
        assert not opened(f"http://radqueue.example.com:{port}")

        # CSRF_TRUSTED_ORIGINS: that scheme, host and port only.
        assert opened("https://viewer.example.com")
        assert not opened("http://viewer.example.com")
        assert not opened("https://viewer.example.com:8443")
