"""The live feed (ws/projects/<id>/) through channels' real communicator and the real services:
who may connect, which events each member receives, and that payloads name no reader."""

import json

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client
from knox.models import AuthToken

from core.asgi import application
from core.broadcast import broadcast_on_commit
from tasks.adjudication import claim_next_adjudication, resolve_adjudication
from tasks.creation import create_tasks
from tasks.queue import claim_next_read
from tasks.reads import release_read, submit_read
from tests.tasks.conftest import add_ct_studies

pytestmark = pytest.mark.django_db(transaction=True)  # the consumer looks permissions up on its own connection

# A browser's page of the site itself: same scheme, host and port (core.websocket_auth).
SITE = [(b"host", b"testserver"), (b"origin", b"http://testserver")]


def _token(user) -> str:
    return AuthToken.objects.create(user)[1]


def _communicator(project_id, *, token=None, subprotocols=None, headers=()):
    if token:
        subprotocols = ["radqueue", f"token.{token}"]
    return WebsocketCommunicator(application, f"/ws/projects/{project_id}/", headers=[*SITE, *headers],
                                 subprotocols=subprotocols)


async def _open(project_id, user):
    """A connected socket for ``user`` that has received its feed.ready greeting."""
    token = await sync_to_async(_token)(user)
    communicator = _communicator(project_id, token=token)
    connected, _ = await communicator.connect()
    assert connected
    ready = await communicator.receive_json_from(timeout=5)
    assert ready["event"] == "feed.ready", ready
    return communicator


async def _events(communicator, until: str | None = None, timeout=2.0) -> list[dict]:
    """Every event waiting on the socket (or up to and including the first ``until``)."""
    received = []
    while not await communicator.receive_nothing(timeout=0.3 if until is None else 0.01):
        received.append(await communicator.receive_json_from(timeout=timeout))
        if until is not None and received[-1]["event"] == until:
            break
    if until is not None and not any(e["event"] == until for e in received):
        received.append(await communicator.receive_json_from(timeout=timeout))
    return received


async def _close_code(communicator) -> int:
    connected, _ = await communicator.connect()
    assert connected  # accepted, then closed with the reason's code
    output = await communicator.receive_output(timeout=5)
    await communicator.wait()
    assert output["type"] == "websocket.close", output
    return output["code"]


def test_callers_who_cannot_watch_the_project_are_refused_with_their_reason(cast):
    project = cast.project.pk
    tokens = {name: _token(getattr(cast, name)) for name in ("outsider", "foreign_manager", "auditor",
                                                             "privacy_officer", "manager")}

    async def scenario():
        codes = {name: await _close_code(_communicator(project, token=token)) for name, token in tokens.items()
                 if name != "manager"}
        codes["anonymous"] = await _close_code(_communicator(project))
        codes["bad token"] = await _close_code(_communicator(project, token="0" * 64))
        codes["unknown project"] = await _close_code(_communicator(999999, token=tokens["manager"]))
        codes["foreign project"] = await _close_code(_communicator(cast.foreign_project.pk, token=tokens["manager"]))
        return codes

    assert async_to_sync(scenario)() == {
        "outsider": 4404, "foreign_manager": 4404, "unknown project": 4404, "foreign project": 4404,
        "auditor": 4403, "privacy_officer": 4403, "anonymous": 4401, "bad token": 4401,
    }


def test_a_socket_from_a_foreign_origin_is_refused(cast):
    token = _token(cast.manager)

    async def scenario():
        communicator = WebsocketCommunicator(application, f"/ws/projects/{cast.project.pk}/",
                                             headers=[(b"host", b"testserver"), (b"origin", b"https://evil.example")],
                                             subprotocols=["radqueue", f"token.{token}"])
        connected, _ = await communicator.connect()
        return connected

    assert async_to_sync(scenario)() is False


def test_a_token_client_that_sends_no_origin_is_accepted(cast):
    token = _token(cast.manager)

    async def scenario():
        communicator = WebsocketCommunicator(application, f"/ws/projects/{cast.project.pk}/",
                                             subprotocols=["radqueue", f"token.{token}"])
        connected, _ = await communicator.connect()
        greeting = await communicator.receive_json_from(timeout=5)
        await communicator.disconnect()
        return connected, greeting

    connected, greeting = async_to_sync(scenario)()
    assert connected and greeting["event"] == "feed.ready"


def test_readers_receive_their_own_queue_events_and_nobody_elses(cast):
    add_ct_studies(cast.project, 1)
    create_tasks(cast.project, by=cast.manager)

    async def scenario():
        first = await _open(cast.project.pk, cast.annotator)
        second = await _open(cast.project.pk, cast.second_annotator)
        manager = await _open(cast.project.pk, cast.manager)
        claim = await sync_to_async(claim_next_read)(cast.annotator)
        await sync_to_async(release_read)(claim.read.pk, cast.annotator)
        mine, theirs, managers = await _events(first), await _events(second), await _events(manager)
        for communicator in (first, second, manager):
            await communicator.disconnect()
        return claim, mine, theirs, managers

    claim, mine, theirs, managers = async_to_sync(scenario)()
    assert [(e["event"], e["data"]["read"]) for e in mine] == [("read.claimed", claim.read.pk),
                                                               ("read.released", claim.read.pk)]
    assert mine[0]["data"]["task"] == claim.task.pk and mine[0]["project"] == cast.project.pk
    assert theirs == []  # another reader's claim is not theirs to see
    assert not [e for e in managers if e["event"].startswith("read.")]  # queue events are the reader's own


def test_a_reader_whose_lapsed_slot_another_reader_takes_is_told_read_expired(cast):
    from datetime import timedelta

    from django.utils import timezone

    from audit.models import AuditEvent
    from tasks.models import QueueSlot, Read

    add_ct_studies(cast.project, 1)
    create_tasks(cast.project, by=cast.manager)

    async def scenario():
        first = await _open(cast.project.pk, cast.annotator)
        second = await _open(cast.project.pk, cast.second_annotator)
        lapsed = await sync_to_async(claim_next_read)(cast.annotator)
        past = timezone.now() - timedelta(minutes=1)
        await sync_to_async(lambda: (QueueSlot.objects.filter(read=lapsed.read).update(lease_expires_at=past),
                                     Read.objects.filter(pk=lapsed.read.pk).update(lease_expires_at=past)))()
        # The lapsed slot is the head of the queue: the next claim takes it over in the claim itself.
        taken = await sync_to_async(claim_next_read)(cast.second_annotator)
        mine, theirs = await _events(first), await _events(second)
        for communicator in (first, second):
            await communicator.disconnect()
        return lapsed, taken, mine, theirs

    lapsed, taken, mine, theirs = async_to_sync(scenario)()
    assert QueueSlot.objects.get(read=taken.read).pk is not None
    assert Read.objects.get(pk=lapsed.read.pk).state == "expired"
    assert [(e["event"], e["data"]["read"]) for e in mine] == [("read.claimed", lapsed.read.pk),
                                                               ("read.expired", lapsed.read.pk)]
    assert [e["event"] for e in theirs] == ["read.claimed"]  # the new holder hears only of its own claim
    assert AuditEvent.objects.filter(action="expire", object_id=str(lapsed.read.pk),
                                     extra__reclaimed_by_read=taken.read.pk).count() == 1


def test_a_reader_socket_on_another_project_does_not_carry_this_projects_queue_events(cast):
    from core.memberships import grant_membership
    from core.roles import Role

    grant_membership(project=cast.foreign_project, user=cast.annotator, role=Role.ANNOTATOR, by=cast.superuser)
    add_ct_studies(cast.project, 1)
    create_tasks(cast.project, by=cast.manager)

    async def scenario():
        elsewhere = await _open(cast.foreign_project.pk, cast.annotator)
        here = await _open(cast.project.pk, cast.annotator)
        await sync_to_async(claim_next_read)(cast.annotator, project_id=cast.project.pk)
        result = await _events(elsewhere), await _events(here)
        await elsewhere.disconnect()
        await here.disconnect()
        return result

    elsewhere, here = async_to_sync(scenario)()
    assert elsewhere == [] and [e["event"] for e in here] == ["read.claimed"]


def _double_read(cast, first_value: str, second_value: str):
    for reader, value in ((cast.annotator, first_value), (cast.second_annotator, second_value)):
        claim = claim_next_read(reader)
        submit_read(claim.read.pk, reader, [{"label": "finding_laterality", "value": value}])
    return claim.task


def test_project_events_reach_managers_and_clients_without_reader_identities(cast):
    add_ct_studies(cast.project, 2)
    create_tasks(cast.project, by=cast.manager)
    identities = {u.username for u in (cast.annotator, cast.second_annotator, cast.radiologist)}
    identities |= {u.pseudonym for u in (cast.annotator, cast.second_annotator, cast.radiologist)}

    async def scenario():
        client, manager = await _open(cast.project.pk, cast.client_viewer), await _open(cast.project.pk, cast.manager)
        reader = await _open(cast.project.pk, cast.annotator)
        agreed = await sync_to_async(_double_read)(cast, "left", "left")
        disputed = await sync_to_async(_double_read)(cast, "left", "right")
        adjudication = await sync_to_async(claim_next_adjudication)(cast.radiologist)
        await sync_to_async(resolve_adjudication)(adjudication.pk, cast.radiologist, resolution="new",
                                                  rationale="laterality on the coronal", findings=[
                                                      {"label": "finding_laterality", "value": "right"}])
        seen = {"client": await _events(client), "manager": await _events(manager), "reader": await _events(reader)}
        for communicator in (client, manager, reader):
            await communicator.disconnect()
        return agreed, disputed, adjudication, seen

    agreed, disputed, adjudication, seen = async_to_sync(scenario)()
    expected = [("task.consensus", {"task": agreed.pk, "method": "agreed"}),
                ("adjudication.opened", {"adjudication": adjudication.pk, "task": disputed.pk,
                                         "tier": adjudication.tier}),
                ("adjudication.resolved", {"adjudication": adjudication.pk, "task": disputed.pk, "resolution": "new"}),
                ("task.consensus", {"task": disputed.pk, "method": "adjudicated"})]
    for role in ("client", "manager"):
        project_events = [(e["event"], e["data"]) for e in seen[role] if e["event"] != "progress.delta"]
        assert project_events == expected, role
        text = json.dumps(seen[role])
        assert not [name for name in identities if name in text], role
    assert {e["event"] for e in seen["reader"]} == {"read.claimed", "read.submitted"}  # own events only


def test_reader_suspensions_reach_managers_but_not_clients(cast):
    async def scenario():
        client, manager = await _open(cast.project.pk, cast.client_viewer), await _open(cast.project.pk, cast.manager)
        await sync_to_async(broadcast_on_commit)(cast.project.pk, "reader.suspended",
                                                 {"reader": cast.annotator.pseudonym, "reason": "gold"})
        result = await _events(client), await _events(manager)
        await client.disconnect()
        await manager.disconnect()
        return result

    client, manager = async_to_sync(scenario)()
    assert client == [] and [e["event"] for e in manager] == ["reader.suspended"]


def test_ingest_finished_is_announced_with_counts(cast):
    async def scenario():
        manager = await _open(cast.project.pk, cast.manager)
        await sync_to_async(add_ct_studies)(cast.project, 1)
        events = await _events(manager, until="ingest.finished")
        await manager.disconnect()
        return events

    finished = [e for e in async_to_sync(scenario)() if e["event"] == "ingest.finished"]
    assert len(finished) == 1
    assert finished[0]["data"] | {"batch": None} == {"batch": None, "studies": 1, "accepted": 2, "duplicate": 0,
                                                     "rejected": 0, "quarantined": 0}


def test_a_token_in_the_url_is_refused_even_beside_a_valid_session(cast):
    """URLs are written to access logs: a token there is refused (4401), so clients keep it out."""
    token = _token(cast.manager)
    browser = Client()
    browser.force_login(cast.manager)
    cookie = f"sessionid={browser.cookies['sessionid'].value}".encode()

    async def scenario():
        in_url = WebsocketCommunicator(application, f"/ws/projects/{cast.project.pk}/?token={token}", headers=SITE)
        with_session = WebsocketCommunicator(application, f"/ws/projects/{cast.project.pk}/?token={token}",
                                             headers=[*SITE, (b"cookie", cookie)])
        return await _close_code(in_url), await _close_code(with_session)

    assert async_to_sync(scenario)() == (4401, 4401)


def test_the_token_travels_as_a_subprotocol_and_the_session_is_accepted(cast):
    token = _token(cast.client_viewer)
    browser = Client()
    browser.force_login(cast.manager)
    cookie = f"sessionid={browser.cookies['sessionid'].value}".encode()

    async def scenario():
        by_protocol = _communicator(cast.project.pk, subprotocols=["radqueue", f"token.{token}"])
        connected, protocol = await by_protocol.connect()
        greeting = await by_protocol.receive_json_from(timeout=5)
        await by_protocol.disconnect()
        by_session = _communicator(cast.project.pk, headers=[(b"cookie", cookie)])
        session_connected, _ = await by_session.connect()
        session_greeting = await by_session.receive_json_from(timeout=5)
        await by_session.disconnect()
        return connected, protocol, greeting, session_connected, session_greeting

    connected, protocol, greeting, session_connected, session_greeting = async_to_sync(scenario)()
    assert connected and protocol == "radqueue" and greeting["event"] == "feed.ready"
    assert session_connected and session_greeting["data"]["project_events"] is True
