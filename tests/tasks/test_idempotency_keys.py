"""Idempotency-Key on submit: a key no retry could match exactly is refused whole (400, nothing
stored); a key at the limit is stored whole, so its retry gets the first result."""

import pytest

from audit.models import AuditEvent
from core import idempotency
from core.errors import DomainError
from tasks.models import Read, Task
from tasks.reads import submit_read
from tasks.states import ReadState

pytestmark = pytest.mark.django_db

LATERALITY = [{"label": "finding_laterality", "value": "left"}]


@pytest.fixture
def held(cast, api, queued):
    """The annotator's client and the id of the read they hold."""
    client = api(cast.annotator)
    response = client.post("/api/queue/next/", {}, format="json")
    assert response.status_code == 200, response.json()
    return client, response.json()["read"]


def _submit(client, read_id, key, findings=LATERALITY):
    return client.post(f"/api/reads/{read_id}/submit/", {"findings": findings}, format="json",
                       HTTP_IDEMPOTENCY_KEY=key)


def _nothing_stored(read_id):
    read = Read.objects.get(pk=read_id)
    assert read.state == ReadState.CLAIMED and read.findings is None and read.idempotency_key == ""
    assert Task.objects.get(pk=read.task_id).reads_submitted == 0
    assert not AuditEvent.objects.filter(action="submit", object_id=str(read_id), outcome="allowed").exists()


def test_key_over_100_characters_is_refused_naming_the_limit_and_nothing_is_stored(held):
    client, read_id = held
    response = _submit(client, read_id, "k" * 101)
    assert response.status_code == 400, response.json()
    body = response.json()
    assert body["code"] == "invalid_idempotency_key" and "100" in body["detail"]
    assert body["errors"] == {"Idempotency-Key": ["At most 100 characters; this one has 101."]}
    _nothing_stored(read_id)


@pytest.mark.parametrize("key", ["two words", "tab\there", "clé-1", "\x7f"])
def test_key_with_spaces_control_or_non_ascii_characters_is_refused(held, key):
    client, read_id = held
    response = _submit(client, read_id, key)
    assert response.status_code == 400 and response.json()["code"] == "invalid_idempotency_key"
    _nothing_stored(read_id)


def test_retry_with_a_100_character_key_returns_the_first_result(held):
    client, read_id = held
    key = "".join(chr(33 + n % 94) for n in range(100))  # every visible ASCII character is allowed
    first = _submit(client, read_id, key)
    assert first.status_code == 200, first.json()
    retry = _submit(client, read_id, key, findings=[{"label": "finding_laterality", "value": "right"}])
    assert retry.status_code == 200, retry.json()
    assert retry.json() == first.json()
    read = Read.objects.get(pk=read_id)
    assert read.idempotency_key == key and read.findings[0]["value"] == "left"
    assert Task.objects.get(pk=read.task_id).reads_submitted == 1


def test_the_service_refuses_a_long_key_instead_of_cutting_it(cast, held):
    _, read_id = held
    with pytest.raises(DomainError) as refused:
        submit_read(read_id, cast.annotator, LATERALITY, idempotency_key="k" * 101)
    assert refused.value.code == "invalid_idempotency_key"
    _nothing_stored(read_id)


def test_the_limit_is_the_stored_column_width():
    assert Read._meta.get_field("idempotency_key").max_length == idempotency.MAX_LENGTH


def test_openapi_documents_the_header_with_its_limit(api, cast):
    schema = api(cast.manager).get("/api/schema/?format=json").json()
    submit = schema["paths"]["/api/reads/{id}/submit/"]["post"]
    (header,) = [p for p in submit["parameters"] if p["in"] == "header" and p["name"] == "Idempotency-Key"]
    assert header["schema"]["maxLength"] == 100 and header["schema"]["pattern"] == "^[!-~]{1,100}$"
    assert "400" in submit["responses"]
