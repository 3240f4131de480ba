"""Real HTTP: dicomweb-client against a live radqueue server, and import_dicomweb from a live Orthanc."""

import io

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from django.core.management import call_command
from knox.models import AuthToken
from pydicom.data import get_testdata_file

from bench import orthanc
from core.dicom import synthetic
from core.dicom.deid import replace_uid
from core.dicom.ingest import project_secret
from core.dicom.models import Instance


@pytest.mark.django_db(transaction=True)
def test_dicomweb_client_round_trip_against_the_live_server(cast, live_server):
    _, token = AuthToken.objects.create(cast.manager)
    client = DICOMwebClient(url=f"{live_server.url}/dicomweb", headers={"Authorization": f"Token {token}"})
    datasets = synthetic.make_ct_series(n_slices=3, rows=16, cols=16, seed=61)
    stored = client.store_instances(datasets)
    uids = [item.ReferencedSOPInstanceUID for item in stored.ReferencedSOPSequence]
    assert len(uids) == 3
    studies = client.search_for_studies()
    study_uid = studies[0]["0020000D"]["Value"][0]
    series = client.search_for_series(study_uid)
    series_uid = series[0]["0020000E"]["Value"][0]
    instances = client.search_for_instances(study_uid, series_uid)
    assert {i["00080018"]["Value"][0] for i in instances} == set(uids)
    instance = client.retrieve_instance(study_uid, series_uid, uids[0])
    assert instance.PatientIdentityRemoved == "YES"
    frames = client.retrieve_instance_frames(study_uid, series_uid, uids[0], frame_numbers=[1])
    assert len(frames[0]) == 16 * 16 * 2
    metadata = client.retrieve_series_metadata(study_uid, series_uid)
    assert len(metadata) == 3
    rendered = client.retrieve_instance_rendered(study_uid, series_uid, uids[0], media_types=("image/jpeg",))
    assert rendered[:2] == b"\xff\xd8"


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(bool(orthanc.unavailable_reason()), reason=orthanc.unavailable_reason() or "available")
def test_import_dicomweb_pulls_a_study_from_orthanc(cast):
    data = open(get_testdata_file("CT_small.dcm"), "rb").read()
    original = pydicom.dcmread(io.BytesIO(data))
    with orthanc.running_orthanc() as url:
        orthanc.upload(url, data)
        call_command("import_dicomweb", f"{url}/dicom-web", project=cast.project.pk, study=original.StudyInstanceUID)
    instance = Instance.objects.get()
    assert instance.sop_instance_uid == replace_uid(original.SOPInstanceUID, project_secret(cast.project))
