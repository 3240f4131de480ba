"""A token sent in a URL never reaches the server's access log (uvicorn, as deploy/ runs it)."""

import os
import subprocess
import sys
import time

import httpx
import pytest

from tests.servers import ROOT, _free_port, shared_database_url

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_query_string_token_is_redacted_in_uvicorn_access_lines(tmp_path):
    port = _free_port()
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="core.settings_test", DATABASE_URL=shared_database_url())
    log_path = tmp_path / "uvicorn.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "uvicorn", "core.asgi:application", "--port", str(port),
                                   "--lifespan", "off", "--log-level", "info"],
                                  cwd=ROOT, env=env, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline and server.poll() is None, log_path.read_text()
                    time.sleep(0.2)
            secret = "9f3c0ddeadbeefsecrettoken"
            httpx.get(f"http://127.0.0.1:{port}/healthz?token={secret}&x=1", timeout=5)
            time.sleep(0.5)
        finally:
            server.terminate()
            server.wait(timeout=15)
    text = log_path.read_text()
    assert "/healthz?token=[redacted]&x=1" in text, text  # the line is still there, minus the credential
    assert secret not in text
