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


# Rules the schema documents (core.schema.PROTOCOL_RULES_SCHEMA) that task creation or routing could not
# use: they were stored, and creating tasks under them was a 500 (a rule without its subspecialty, a
# tier nobody has). Refused when the version is written, naming the rule.
@pytest.mark.parametrize(("rules", "field"), [
    ({"subspecialty_rules": [{"modality": "CT"}]}, "rules.subspecialty_rules[0]"),
    ({"subspecialty_rules": {"modality": "CT"}}, "rules.subspecialty_rules"),
    ({"first_read_tier": "resident"}, "rules.first_read_tier"),
    ({"adjudication_tier": None, "unit": "instance"}, "rules.unit"),
    ({"modalities": "CT"}, "rules.modalities"),
    ({"agreement": {"dice": 2}}, "rules.agreement.dice"),
    ({"agreement": {"iou": "half"}}, "rules.agreement.iou"),
    ({"agreement": {"grade_within": 0.5}}, "rules.agreement.grade_within"),
    ({"agreement": {"dise": 0.7}}, "rules.agreement.dise"),
    ({"adjudication_subspecialty": "no"}, "rules.adjudication_subspecialty"),
])
def test_protocol_rules_that_task_creation_cannot_use_are_a_400_naming_the_rule(cast, rules, field):
    from tests.tasks.conftest import add_ct_studies

    add_ct_studies(cast.project, 1)
    client = token_client(cast.manager)
    created = client.post(f"/api/projects/{cast.project.pk}/protocol-versions/", {"name": "v2", "rules": rules},
                          format="json")
    assert created.status_code == 400, created.content
    assert field in created.json()["errors"], created.json()
    unused = client.patch(f"/api/projects/{cast.project.pk}/protocol-versions/1/", {"rules": rules}, format="json")
    assert unused.status_code == 400 and field in unused.json()["errors"], unused.content
    tasks = client.post(f"/api/projects/{cast.project.pk}/tasks/create/", {}, format="json")
    assert tasks.status_code == 201, tasks.content


def test_the_documented_rules_example_is_accepted_and_tasks_are_made_under_it(cast):
    from core.schema import PROTOCOL_RULES_SCHEMA
    from tests.tasks.conftest import add_ct_studies

    add_ct_studies(cast.project, 1)
    client = token_client(cast.manager)
    example = PROTOCOL_RULES_SCHEMA["example"]
    created = client.post(f"/api/projects/{cast.project.pk}/protocol-versions/", {"name": "v2", "rules": example},
                          format="json")
    assert created.status_code == 201, created.content
    assert created.json()["rules"] == example
    tasks = client.post(f"/api/projects/{cast.project.pk}/tasks/create/", {}, format="json")
    assert tasks.status_code == 201 and tasks.json()["created"] == 1, tasks.content


def _schema() -> dict:
    from drf_spectacular.generators import SchemaGenerator

    return SchemaGenerator().get_schema(request=None, public=True)


def test_a_readers_reads_lack_the_reader_fields_the_schema_calls_optional(cast, api):
    from tasks.queue import claim_next_read
    from tests.tasks.conftest import add_ct_studies

    add_ct_studies(cast.project, 1)
    token_client(cast.manager).post(f"/api/projects/{cast.project.pk}/tasks/create/", {}, format="json")
    read = claim_next_read(cast.annotator, project_id=cast.project.pk).read
    mine = api(cast.annotator).get("/api/reads/").json()["results"]
    assert [r["id"] for r in mine] == [read.pk] and not {"reader", "reader_pseudonym", "tier"} & set(mine[0])
    listed = _schema()["paths"]["/api/reads/"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    page = _schema()["components"]["schemas"][listed["$ref"].rsplit("/", 1)[1]]
    item = _schema()["components"]["schemas"][page["properties"]["results"]["items"]["$ref"].rsplit("/", 1)[1]]
    assert {"reader", "reader_pseudonym", "tier"} <= set(item["properties"])
    assert not {"reader", "reader_pseudonym", "tier"} & set(item["required"])
    assert set(mine[0]) <= set(item["properties"]) and set(item["required"]) <= set(mine[0])


def test_the_uploads_400_is_documented_as_the_report_or_the_error_body(cast):
    refused = token_client(cast.manager).post(f"/api/projects/{cast.project.pk}/studies/upload/", {},
                                              format="multipart")
    assert refused.status_code == 400 and refused.json()["code"] == "no_files" and "files" in refused.json()["errors"]
    upload = _schema()["paths"]["/api/projects/{project_pk}/studies/upload/"]["post"]["responses"]["400"]
    assert [one["$ref"] for one in upload["content"]["application/json"]["schema"]["oneOf"]] == [
        "#/components/schemas/IngestReport", "#/components/schemas/Error"]


def test_the_schema_documents_findings_rules_and_kappas_weighting():
    schema = _schema()
    components = schema["components"]["schemas"]
    findings = components["SubmitRequest"]["properties"]["findings"]
    assert findings["type"] == "array" and findings["items"]["required"] == ["label"]
    assert {"bbox", "bbox3d", "polygon", "line", "point", "point_mm", "mask", "value"} <= set(
        findings["items"]["properties"])
    submit = schema["paths"]["/api/reads/{id}/submit/"]["post"]["requestBody"]["content"]["application/json"]
    assert submit["examples"]
    rules = components["ProtocolVersion"]["properties"]["rules"]
    assert set(rules["properties"]["agreement"]["properties"]) == {"grade_within", "dice", "iou", "landmark_mm",
                                                                   "measurement_rel"}
    assert rules["example"]
    metric = components["ConcordanceRow"]["properties"]["metric"]
    assert "weighted_kappa: Cohen's kappa with quadratic weights" in metric["description"]


def test_no_operation_is_described_by_an_internal_docstring():
    from audit.recorder import AuditedViewMixin

    internal = AuditedViewMixin.__doc__.strip().splitlines()[0]
    described = [(path, method, operation.get("description", "")) for path, operations in _schema()["paths"].items()
                 for method, operation in operations.items()]
    assert described and not [(path, method) for path, method, text in described if internal in text]


@pytest.mark.parametrize("fmt", ["json", "multipart"])
def test_a_claim_for_a_project_id_beyond_bigint_is_a_404_like_any_project_that_does_not_exist(cast, fmt):
    # The refusal's audit event took the id for its project column (a bigint): the answer was a 500.
    response = token_client(cast.annotator).post("/api/queue/next/", {"project": BEYOND_BIGINT * 2**20,
                                                                      "another": True}, format=fmt)
    assert response.status_code == 404 and response.json()["code"] == "not_found", response.content
