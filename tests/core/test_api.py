"""API conventions: JSON errors with field messages, 400 never 500 on bad input, pagination and
filtering on lists, every endpoint documented in the OpenAPI schema, health probes."""

import pytest
from django.core.management import call_command

pytestmark = pytest.mark.django_db


def test_malformed_json_is_a_400_with_a_json_body(cast, api):
    client = api(cast.manager)
    response = client.generic("POST", "/api/projects/", '{"name": "x", ', content_type="application/json")
    assert response.status_code == 400
    assert response.json()["code"] == "parse_error"


@pytest.mark.parametrize("body,field", [
    ({"name": "x", "client": "not-a-number", "modalities": ["CT"]}, "client"),
    ({"name": "x", "client": 1, "modalities": "CT"}, "modalities"),
    ({"name": "x", "client": 1, "modalities": ["XYZ"]}, "modalities"),
    ({"name": ["a"], "client": 1, "modalities": ["CT"], "reads_per_task": 9}, "reads_per_task"),
    ([1, 2, 3], "non_field_errors"),
])
def test_wrong_types_are_400_naming_the_field(cast, api, body, field):
    response = api(cast.manager).post("/api/projects/", body, format="json")
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid" and field in body["errors"]


def test_lists_are_paginated_and_filterable(cast, api):
    client = api(cast.superuser)
    page = client.get("/api/organizations/?page_size=2").json()
    assert page["count"] == 4 and len(page["results"]) == 2 and page["next"]
    clients = client.get("/api/organizations/?kind=client").json()["results"]
    assert {o["name"] for o in clients} == {"Client", "Other client"}
    mammo = client.get("/api/projects/?modality=MG").json()["results"]
    assert [p["name"] for p in mammo] == ["Chest CT"]
    annotators = client.get(f"/api/projects/{cast.project.pk}/memberships/?role=annotator").json()["results"]
    assert {m["username"] for m in annotators} == {"annotator", "second_annotator"}


def test_bad_filter_value_is_400(cast, api):
    response = api(cast.superuser).get("/api/organizations/?kind=planet")
    assert response.status_code == 400


def test_openapi_schema_documents_every_endpoint_without_warnings(tmp_path):
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    text = out.read_text()
    for path in ("/api/projects/", "/api/projects/{project_pk}/memberships/",
                 "/api/projects/{project_pk}/protocol-versions/{number}/", "/api/auth/token/",
                 "/api/audit/events/", "/api/schema-templates/{id}/"):
        assert f"  {path}:" in text


def test_docs_page_is_served_with_local_assets(client):
    response = client.get("/api/docs/")
    assert response.status_code == 200
    assert b"swagger" in response.content.lower()
    assert b"cdn.jsdelivr" not in response.content
    bundle = client.get("/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js")
    assert bundle.status_code == 200


def test_healthz_and_readyz(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "channel_layer": "ok"}


def test_readyz_is_503_naming_the_broken_dependency(client, monkeypatch):
    from core import health

    monkeypatch.setattr(health, "_channel_layer_ok", lambda: False)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"] == {"database": "ok", "channel_layer": "unavailable"}


def test_readyz_logs_the_failure_and_answers_no_exception_text(client, monkeypatch, caplog):
    from core import health

    class Broken:
        def new_channel(self, prefix):
            raise ConnectionError("redis://:hunter2@10.1.2.3:6379 refused")

    monkeypatch.setattr(health, "get_channel_layer", lambda: Broken())
    with caplog.at_level("ERROR", logger="core.health"):
        response = client.get("/readyz")
    assert response.status_code == 503
    assert b"hunter2" not in response.content and b"10.1.2.3" not in response.content
    assert b"ConnectionError" not in response.content
    assert response.json()["checks"]["channel_layer"] == "unavailable"
    assert "hunter2" in caplog.text  # the operator still sees why, in the server log
