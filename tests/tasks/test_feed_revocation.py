"""A live-feed socket lasts no longer than what authorised it: it closes within seconds of its
membership ending (at once), its token being deleted, its session ending or its account being
deactivated (at the next re-check), and forwards nothing after that."""

import asyncio
import json
import time

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client
from knox.models import AuthToken

from core.asgi import application
from core.broadcast import broadcast_on_commit
from core.memberships import revoke_membership
from core.models import Membership, User
from core.roles import Role
from tasks import feed
from tasks.creation import create_tasks
from tasks.queue import claim_next_read
from tests.servers import next_event, quiet, redis_unavailable
from tests.tasks.conftest import add_ct_studies

pytestmark = pytest.mark.django_db(transaction=True)  # the consumer looks permissions up on its own connection

SITE = [(b"host", b"testserver"), (b"origin", b"http://testserver")]  # a page of the site itself


async def _open(project_id, *, token=None, cookie=None):
    headers = SITE + ([(b"cookie", cookie)] if cookie else [])
    communicator = WebsocketCommunicator(application, f"/ws/projects/{project_id}/", headers=headers,
                                         subprotocols=["radqueue", f"token.{token}"] if token else None)
    connected, _ = await communicator.connect()
    assert connected
    assert (await communicator.receive_json_from(timeout=5))["event"] == "feed.ready"
    return communicator


async def _until_closed(communicator, timeout: float) -> tuple[list[dict], int, float]:
    """Events received before the socket closed, its close code, and how long the close took."""
    started, events = time.monotonic(), []
    while True:
        output = await communicator.receive_output(timeout=timeout)
        if output["type"] == "websocket.close":
            await communicator.wait()
            return events, output["code"], time.monotonic() - started
        events.append(json.loads(output["text"]))


def _membership(cast, user, role) -> Membership:
    return Membership.objects.get(project=cast.project, user=user, role=role)


def test_a_socket_closes_as_soon_as_its_membership_ends_and_forwards_nothing_more(cast):
    token = AuthToken.objects.create(cast.client_viewer)[1]
    membership = _membership(cast, cast.client_viewer, Role.CLIENT)

    async def scenario():
        client = await _open(cast.project.pk, token=token)
        await sync_to_async(revoke_membership)(membership, by=cast.manager)
        await sync_to_async(broadcast_on_commit)(cast.project.pk, "task.consensus", {"task": 1, "method": "agreed"})
        return await _until_closed(client, timeout=feed.RECHECK_SECONDS / 2)

    events, code, took = async_to_sync(scenario)()
    assert code == feed.CLOSE_NOT_FOUND  # the project is no longer theirs to see
    assert events == [] and took < feed.RECHECK_SECONDS / 2  # the revocation, not the next period, closed it


def test_a_reader_hears_their_read_released_then_their_socket_closes(cast):
    add_ct_studies(cast.project, 1)
    create_tasks(cast.project, by=cast.manager)
    token = AuthToken.objects.create(cast.annotator)[1]
    membership = _membership(cast, cast.annotator, Role.ANNOTATOR)

    async def scenario():
        reader = await _open(cast.project.pk, token=token)
        claim = await sync_to_async(claim_next_read)(cast.annotator)
        await sync_to_async(revoke_membership)(membership, by=cast.manager)
        return claim, await _until_closed(reader, timeout=2)

    claim, (events, code, _) = async_to_sync(scenario)()
    assert [(e["event"], e["data"]["read"]) for e in events] == [("read.claimed", claim.read.pk),
                                                                 ("read.released", claim.read.pk)]
    assert code == feed.CLOSE_NOT_FOUND


def test_ending_one_of_two_roles_keeps_the_socket_open_with_what_remains(cast):
    from core.memberships import grant_membership

    grant_membership(project=cast.project, user=cast.annotator, role=Role.RADIOLOGIST, subspecialties=["chest"],
                     by=cast.superuser)
    token = AuthToken.objects.create(cast.annotator)[1]
    membership = _membership(cast, cast.annotator, Role.ANNOTATOR)

    async def scenario():
        reader = await _open(cast.project.pk, token=token)
        await sync_to_async(revoke_membership)(membership, by=cast.manager)
        still_open = await reader.receive_nothing(timeout=1)
        await reader.disconnect()
        return still_open

    assert async_to_sync(scenario)() is True


@pytest.fixture
def quick_rechecks(monkeypatch):
    monkeypatch.setattr(feed, "RECHECK_SECONDS", 0.5)


def test_a_socket_closes_within_seconds_of_its_token_being_deleted(cast, quick_rechecks):
    instance, token = AuthToken.objects.create(cast.manager)

    async def scenario():
        manager = await _open(cast.project.pk, token=token)
        await sync_to_async(instance.delete)()
        return await _until_closed(manager, timeout=3)

    events, code, took = async_to_sync(scenario)()
    assert code == feed.CLOSE_UNAUTHENTICATED and events == [] and took < 2


def test_an_event_after_the_token_was_deleted_is_not_forwarded(cast, quick_rechecks):
    instance, token = AuthToken.objects.create(cast.manager)

    async def scenario():
        manager = await _open(cast.project.pk, token=token)
        await sync_to_async(instance.delete)()
        await asyncio.sleep(feed.RECHECK_SECONDS)  # the last check is stale now: the event waits for a new one
        await sync_to_async(broadcast_on_commit)(cast.project.pk, "task.consensus", {"task": 1, "method": "agreed"})
        return await _until_closed(manager, timeout=3)

    events, code, _ = async_to_sync(scenario)()
    assert code == feed.CLOSE_UNAUTHENTICATED and events == []


def test_a_session_socket_closes_after_logout_and_a_deactivated_accounts_socket_too(cast, quick_rechecks):
    browser = Client()
    browser.force_login(cast.manager)
    cookie = f"sessionid={browser.cookies['sessionid'].value}".encode()
    token = AuthToken.objects.create(cast.client_viewer)[1]

    async def scenario():
        by_session = await _open(cast.project.pk, cookie=cookie)
        by_token = await _open(cast.project.pk, token=token)
        await sync_to_async(browser.logout)()
        await sync_to_async(User.objects.filter(pk=cast.client_viewer.pk).update)(is_active=False)
        return await _until_closed(by_session, timeout=3), await _until_closed(by_token, timeout=3)

    (_, session_code, _), (_, token_code, _) = async_to_sync(scenario)()
    assert session_code == token_code == feed.CLOSE_UNAUTHENTICATED


@pytest.mark.redis
@pytest.mark.skipif(bool(redis_unavailable()), reason=redis_unavailable() or "Redis is up")
def test_revoking_on_one_server_closes_the_socket_held_on_another_through_redis(cast, api, tmp_path):
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    from tests.servers import asgi_servers

    add_ct_studies(cast.project, 1)
    create_tasks(cast.project, by=cast.manager)
    tokens = {u.username: AuthToken.objects.create(u)[1] for u in (cast.manager, cast.client_viewer, cast.annotator)}
    client_membership = _membership(cast, cast.client_viewer, Role.CLIENT)

    async def scenario(a: int, b: int):
        def socket_for(name):
            return connect(f"ws://127.0.0.1:{a}/ws/projects/{cast.project.pk}/",
                           subprotocols=["radqueue", f"token.{tokens[name]}"], origin=f"http://127.0.0.1:{a}")

        import httpx

        async with socket_for("manager") as manager, socket_for("client_viewer") as client, \
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{b}") as http:
            for ws in (manager, client):
                await next_event(ws, "feed.ready")
            revoked = await http.delete(f"/api/projects/{cast.project.pk}/memberships/{client_membership.pk}/",
                                        headers={"Authorization": f"Token {tokens['manager']}"})
            assert revoked.status_code == 204, revoked.text
            started, after_revoke = time.monotonic(), []
            try:
                while True:
                    after_revoke.append(json.loads(await asyncio.wait_for(client.recv(), timeout=5)))
            except ConnectionClosed:
                closed_after, code = time.monotonic() - started, client.close_code
            claimed = await http.post("/api/queue/next/", json={},
                                      headers={"Authorization": f"Token {tokens['annotator']}"})
            assert claimed.status_code == 200, claimed.text
            manager_events = await quiet(manager)
            # Token deletion: no broadcast, the next periodic re-check (RECHECK_SECONDS) closes it.
            assert (await http.post("/api/auth/token/revoke-all/",
                                    headers={"Authorization": f"Token {tokens['manager']}"})).status_code in (200, 204)
            started = time.monotonic()
            try:
                while True:
                    await asyncio.wait_for(manager.recv(), timeout=feed.RECHECK_SECONDS + 5)
            except ConnectionClosed:
                manager_closed_after, manager_code = time.monotonic() - started, manager.close_code
        return after_revoke, closed_after, code, manager_events, manager_closed_after, manager_code

    with asgi_servers(2, tmp_path) as (a, b):
        after_revoke, closed_after, code, manager_events, manager_closed_after, manager_code = asyncio.run(
            scenario(a, b))
    assert code == feed.CLOSE_NOT_FOUND and closed_after < 3
    assert [e for e in after_revoke if e["event"] != "progress.delta"] == []
    assert any(e["event"] == "progress.delta" for e in manager_events)  # the manager's socket carried on
    assert manager_code == feed.CLOSE_UNAUTHENTICATED and manager_closed_after < feed.RECHECK_SECONDS + 2
