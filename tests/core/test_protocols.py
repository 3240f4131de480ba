import pytest

from core.models import ProtocolVersion
from core.protocols import mark_protocol_version_used

pytestmark = pytest.mark.django_db


def _url(project, number=None):
    base = f"/api/projects/{project.pk}/protocol-versions/"
    return base if number is None else f"{base}{number}/"


def test_unused_version_can_be_edited(cast, api):
    response = api(cast.manager).patch(_url(cast.project, 1), {"name": "v1 clarified"}, format="json")
    assert response.status_code == 200
    assert response.json()["name"] == "v1 clarified"


def test_used_version_cannot_be_edited_and_a_new_version_can_be_made(cast, api):
    client = api(cast.manager)
    v1 = ProtocolVersion.objects.get(project=cast.project, number=1)
    mark_protocol_version_used(v1)
    before = list(v1.entries.values_list("key", "code_value"))

    response = client.patch(_url(cast.project, 1), {"entries": [{"key": "x", "display_name": "X",
                            "kind": "bbox", "coding_scheme": "SCT", "code_value": "1", "code_meaning": "x"}]},
                            format="json")
    assert response.status_code == 400
    assert response.json()["code"] == "protocol_version_locked"
    assert list(v1.entries.values_list("key", "code_value")) == before

    response = client.post(_url(cast.project), {"name": "v2"}, format="json")
    assert response.status_code == 201
    body = response.json()
    assert body["number"] == 2 and body["is_locked"] is False
    assert [(e["key"], e["code_value"]) for e in body["entries"]] == before  # copied from v1
    assert client.get(f"/api/projects/{cast.project.pk}/").json()["current_protocol_version"] == 2


def test_version_from_a_template_carries_its_codes(cast, api):
    response = api(cast.manager).post(_url(cast.project), {"name": "mammo", "template": "birads"}, format="json")
    assert response.status_code == 201
    entries = {e["key"]: e for e in response.json()["entries"]}
    assessment = next(e for e in entries.values() if e["kind"] == "ordinal" and "assessment" in e["key"])
    assert [c["value"] for c in assessment["categories"]][:2] == ["0", "1"]
    assert all(e["code_value"] and e["coding_scheme"] for e in entries.values())


@pytest.mark.parametrize("entry,field_hint", [
    ({"key": "g", "display_name": "Grade", "kind": "ordinal", "coding_scheme": "SCT", "code_value": "1",
      "code_meaning": "x"}, "categories"),
    ({"key": "g", "display_name": "G", "kind": "sparkle", "coding_scheme": "SCT", "code_value": "1",
      "code_meaning": "x"}, "kind"),
    ({"key": "g", "display_name": "G", "kind": "bbox", "coding_scheme": "MADEUP", "code_value": "1",
      "code_meaning": "x"}, "coding_scheme"),
    ({"key": "m", "display_name": "Length", "kind": "measurement", "coding_scheme": "SCT", "code_value": "1",
      "code_meaning": "x"}, "unit"),
])
def test_invalid_entries_are_refused_naming_the_field(cast, api, entry, field_hint):
    response = api(cast.manager).post(_url(cast.project), {"name": "bad", "entries": [entry]}, format="json")
    assert response.status_code == 400
    body = response.json()
    assert field_hint in str(body["errors"])
    assert not ProtocolVersion.objects.filter(project=cast.project, name="bad").exists()


def test_duplicate_keys_are_refused(cast, api):
    entry = {"key": "a", "display_name": "A", "kind": "bbox", "coding_scheme": "SCT", "code_value": "1",
             "code_meaning": "x"}
    response = api(cast.manager).post(_url(cast.project), {"name": "dup", "entries": [entry, entry]}, format="json")
    assert response.status_code == 400
    assert "used twice" in str(response.json()["errors"])


def test_unknown_template_is_404(cast, api):
    response = api(cast.manager).post(_url(cast.project), {"name": "t", "template": "nope"}, format="json")
    assert response.status_code == 404
