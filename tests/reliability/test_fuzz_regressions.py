"""One fast test per server error the API fuzzing (test_api_fuzz.py) found, through the API."""

import pytest

from tests.conftest import token_client

BEYOND_BIGINT = 9223372036854775808  # 2**63: one past what a PostgreSQL bigint holds


def test_qido_never_echoes_a_query_key_with_control_characters_into_the_warning_header(cast):
    client = token_client(cast.manager)
    for key in ("%0A", "%04", "%0D%0AX-Injected:%201"):
        response = client.get(f"/dicomweb/studies?{key}=1&PatientSex=F")
        assert response.status_code == 200, (key, response.status_code)
        warning = response["Warning"]
        assert "\n" not in warning and "\r" not in warning and "\x04" not in warning
        assert "1 other parameter" in warning and "X-Injected" not in response
    plain = client.get("/dicomweb/studies?FancyKeyword=1")
    assert "FancyKeyword" in plain["Warning"]


@pytest.mark.parametrize("path", [
    "/api/projects/{big}/",
    "/api/projects/{big}/settings/",
    "/api/projects/{big}/workforce/",
    "/api/projects/{project}/memberships/{big}/",
    "/api/projects/{project}/protocol-versions/{big}/",
    "/api/projects/{project}/learning/jobs/{big}/",
    "/api/projects/{project}/batches/{big}/report/",
    "/api/projects/{project}/studies/{big}/",
    "/api/projects/{project}/tasks/{big}/",
    "/api/reads/{big}/",
    "/api/adjudications/{big}/",
    "/api/organizations/{big}/",
    "/api/users/{big}/",
    "/api/audit/events/{big}/",
])
def test_ids_beyond_bigint_are_not_found(cast, path):
    response = token_client(cast.manager).get(path.format(big=BEYOND_BIGINT, project=cast.project.pk))
    assert response.status_code == 404, response.content


@pytest.mark.parametrize("offset", ["+16:00", "-23:59", "+25:00"])
@pytest.mark.parametrize("endpoint", ["/api/projects/{project}/reports/concordance/", "/api/audit/events/"])
def test_time_zone_offsets_postgresql_cannot_hold_are_a_400_that_names_the_parameter(cast, endpoint, offset):
    client = token_client(cast.manager)
    for name in ("since", "until"):
        response = client.get(endpoint.format(project=cast.project.pk), {name: f"2026-01-01T00:00:00{offset}"})
        assert response.status_code == 400, (name, response.content)
        assert name in response.json()["errors"]
    assert client.get(endpoint.format(project=cast.project.pk), {"since": "2026-01-01T00:00:00+15:59"}).status_code \
        == 200


def test_priority_weights_null_as_a_form_field_is_a_400(cast):
    client = token_client(cast.manager)
    response = client.patch(f"/api/projects/{cast.project.pk}/learning/", {"priority_weights": "null"},
                            format="multipart")
    assert response.status_code == 400, response.content
    assert "priority_weights" in response.json()["errors"]
    json_null = client.patch(f"/api/projects/{cast.project.pk}/learning/", {"priority_weights": None}, format="json")
    assert json_null.status_code == 400, json_null.content


def test_an_api_url_no_route_matches_is_a_json_404(cast):
    response = token_client(cast.manager).get("/api/schema-templates/%C2%AB%1E%01/")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["code"] == "not_found"


def test_a_users_blank_email_and_an_unsubmitted_reads_duration_match_the_schema(cast):
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)["components"]["schemas"]
    assert "format" not in schema["User"]["properties"]["email"]
    assert schema["ManagedRead"]["properties"]["claim_to_submit_seconds"]["nullable"] is True


PAGED_LISTS = ["studies", "quarantine", "ingest-batches", "adjudications", "batches", "models", "learning/jobs"]


def test_the_seven_paged_lists_are_documented_as_the_pages_they_return(cast):
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    client = token_client(cast.manager)
    for name in PAGED_LISTS:
        body = client.get(f"/api/projects/{cast.project.pk}/{name}/").json()
        assert set(body) == {"count", "next", "previous", "results"}, name
        ok = schema["paths"][f"/api/projects/{{project_pk}}/{name}/"]["get"]["responses"]["200"]
        ref = ok["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        assert set(schema["components"]["schemas"][ref]["properties"]) == set(body), name


def test_the_claims_model_block_is_documented_as_optional(cast):
    from drf_spectacular.generators import SchemaGenerator

    claim = SchemaGenerator().get_schema(request=None, public=True)["components"]["schemas"]["Claim"]
    assert "model" in claim["properties"] and "model" not in claim.get("required", [])


def test_a_nul_character_in_a_query_parameter_is_a_400_not_a_database_error(cast, api):
    answer = api(cast.manager).get(f"/api/projects/{cast.project.pk}/studies/?modality=C%00T&patient=%00")
    assert answer.status_code == 400 and "NUL" in answer.json()["detail"]
