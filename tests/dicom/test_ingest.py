"""Ingest through every way in: per-file reports, bad input, nothing partial or plaintext left behind."""

import io
import tempfile
from pathlib import Path

import pydicom
import pytest
from django.conf import settings
from django.core.management import call_command
from pydicom.data import get_testdata_file

from audit.models import AuditEvent
from core.dicom import synthetic
from core.dicom.deid import replace_uid
from core.dicom.ingest import IngestItem, ingest_files, project_secret
from core.dicom.models import Instance, Series, Study
from core.dicom.storage import get_store
from tests.dicom.conftest import pydicom_bytes, upload, zip_of

pytestmark = pytest.mark.django_db


def _post(client, url, files):
    return client.post(url, {"files": files}, format="multipart")


def _statuses(body) -> dict[str, tuple[str, str]]:
    return {f["name"]: (f["status"], f["reason"]) for f in body["files"]}


def test_upload_of_a_real_file_is_deidentified_indexed_and_encrypted(cast, api, ingest_url):
    original = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    response = _post(api(cast.manager), ingest_url, [upload("ct.dcm", pydicom_bytes("CT_small.dcm"))])
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["accepted"] == 1
    instance = Instance.objects.get()
    secret = project_secret(cast.project)
    assert instance.sop_instance_uid == replace_uid(original.SOPInstanceUID, secret)
    assert instance.series.study.study_uid == replace_uid(original.StudyInstanceUID, secret)
    assert instance.deid_record.profile_version and instance.deid_record.actions
    stored = pydicom.dcmread(io.BytesIO(get_store().read_bytes(instance.storage_name)))
    assert stored.PatientIdentityRemoved == "YES"
    assert str(original.PatientName) not in str(stored.PatientName)
    assert stored.pixel_array.shape == original.pixel_array.shape
    raw = (Path(settings.DATA_DIR) / "objects" / instance.storage_name).read_bytes()
    assert bytes(original.PixelData[:64]) not in raw
    deidentified = AuditEvent.objects.get(action="deidentify", study_uid=instance.series.study.study_uid)
    assert deidentified.extra["instances"] == 1 and deidentified.actor_id == cast.manager.pk
    assert AuditEvent.objects.filter(action="ingest", study_uid=instance.series.study.study_uid).exists()


def test_bad_files_are_reported_one_by_one_and_the_rest_ingested(cast, api, ingest_url, ct_series):
    missing_uid = synthetic.make_ct_series(n_slices=1, rows=16, cols=16, seed=3)[0]
    del missing_uid.SOPInstanceUID
    truncated = synthetic.to_bytes(ct_series[1])[:-500]
    files = [
        upload("good.dcm", synthetic.to_bytes(ct_series[0])),
        upload("notes.txt", b"this is not DICOM at all" * 20),
        upload("empty.dcm", b""),
        upload("truncated.dcm", truncated),
        upload("no-uid.dcm", synthetic.to_bytes(missing_uid)),
        upload("badvr.dcm", pydicom_bytes("badVR.dcm")),
        upload("mr-truncated.dcm", pydicom_bytes("MR_truncated.dcm")),
        upload("again.dcm", synthetic.to_bytes(ct_series[0])),
    ]
    response = _post(api(cast.manager), ingest_url, files)
    assert response.status_code == 201
    status = _statuses(response.json())
    assert status["good.dcm"][0] == "accepted"
    assert status["again.dcm"][0] == "duplicate"
    assert status["notes.txt"] == ("rejected", "not a DICOM file (no 'DICM' prefix after the 128-byte preamble)")
    assert status["empty.dcm"] == ("rejected", "empty file (0 bytes)")
    assert status["truncated.dcm"][0] == "rejected" and "truncated" in status["truncated.dcm"][1]
    assert status["no-uid.dcm"][0] == "rejected" and "SOPInstanceUID" in status["no-uid.dcm"][1]
    assert status["badvr.dcm"][0] == "rejected"
    assert status["mr-truncated.dcm"][0] == "rejected"
    assert Instance.objects.count() == 1  # nothing partial from the refused files
    assert len(list(get_store().names())) == 1


def test_a_batch_where_everything_is_refused_is_a_400_with_reasons(cast, api, ingest_url):
    response = _post(api(cast.manager), ingest_url, [upload("a.txt", b"nope" * 100)])
    assert response.status_code == 400
    assert response.json()["files"][0]["status"] == "rejected"


def test_no_files_is_a_clear_400(cast, api, ingest_url):
    response = api(cast.manager).post(ingest_url, {}, format="multipart")
    assert response.status_code == 400
    assert response.json()["code"] == "no_files"


def test_zip_with_traversal_and_bomb_members_ingests_only_the_safe_ones(cast, api, ingest_url, ct_series):
    archive = zip_of({
        "study/1.dcm": synthetic.to_bytes(ct_series[0]),
        "study/2.dcm": synthetic.to_bytes(ct_series[1]),
        "../../etc/evil.dcm": synthetic.to_bytes(ct_series[2]),
        "/abs/evil.dcm": synthetic.to_bytes(ct_series[3]),
        "study/bomb.bin": b"\0" * (20 * 1024 * 1024),
    })
    response = _post(api(cast.manager), ingest_url, [upload("study.zip", archive)])
    assert response.status_code == 201
    status = _statuses(response.json())
    assert status["study.zip/study/1.dcm"][0] == "accepted"
    assert status["study.zip/study/2.dcm"][0] == "accepted"
    assert "traversal" in status["study.zip/../../etc/evil.dcm"][1]
    assert "absolute" in status["study.zip//abs/evil.dcm"][1]
    assert "zip bomb" in status["study.zip/study/bomb.bin"][1]
    assert Instance.objects.count() == 2


def test_zip_total_size_limit(cast, api, ingest_url, ct_series, settings):
    one = synthetic.to_bytes(ct_series[0])
    settings.RADQUEUE_MAX_ZIP_TOTAL_BYTES = len(one) + 10
    archive = zip_of({"a.dcm": one, "b.dcm": synthetic.to_bytes(ct_series[1])})
    status = _statuses(_post(api(cast.manager), ingest_url, [upload("s.zip", archive)]).json())
    assert status["s.zip/a.dcm"][0] == "accepted"
    assert "inflates beyond" in status["s.zip/b.dcm"][1]


def test_corrupt_zip_is_rejected_with_a_reason(cast, api, ingest_url):
    response = _post(api(cast.manager), ingest_url, [upload("broken.zip", b"PK\x03\x04" + b"\x00" * 200)])
    assert response.status_code == 400
    assert "zip" in response.json()["files"][0]["reason"]


def test_oversize_file_is_refused_and_the_rest_ingested(cast, api, ingest_url, ct_series, settings):
    small = synthetic.to_bytes(ct_series[0])
    settings.RADQUEUE_MAX_FILE_BYTES = len(small) + 100
    big = synthetic.to_bytes(synthetic.make_ct_series(n_slices=1, rows=128, cols=128, seed=9)[0])
    response = _post(api(cast.manager), ingest_url, [upload("small.dcm", small), upload("big.dcm", big)])
    status = _statuses(response.json())
    assert status["small.dcm"][0] == "accepted"
    assert status["big.dcm"][0] == "rejected" and "exceeds" in status["big.dcm"][1]


def test_reingesting_a_study_gives_the_same_uids_and_is_idempotent(cast, ct_series):
    items = lambda: [IngestItem(f"{i}", reader=io.BytesIO(synthetic.to_bytes(ds))) for i, ds in enumerate(ct_series)]  # noqa: E731
    first = ingest_files(cast.project, items(), by=cast.manager, source="folder")
    second = ingest_files(cast.project, items(), by=cast.manager, source="folder")
    assert first.accepted == len(ct_series) and second.duplicate == len(ct_series)
    assert [f.sop_instance_uid for f in first.files] == [f.sop_instance_uid for f in second.files]
    assert Instance.objects.count() == len(ct_series)
    series = Series.objects.get()
    assert series.instance_count == len(ct_series) and series.geometry_issues == []


def test_no_plaintext_phi_on_disk_after_ingest(cast, api, ingest_url):
    marker = "ZZPHIMARKER^QUENTIN"
    datasets = synthetic.make_ct_series(n_slices=3, rows=16, cols=16, seed=11,
                                        patient={"name": marker, "id": "ZZID-998877"})
    before = set(Path(tempfile.gettempdir()).glob("*"))
    _post(api(cast.manager), ingest_url, [upload(f"{i}.dcm", synthetic.to_bytes(ds)) for i, ds in enumerate(datasets)])
    assert Instance.objects.count() == 3
    roots = [Path(settings.DATA_DIR), *[p for p in Path(tempfile.gettempdir()).glob("*") if p not in before]]
    for root in roots:
        for path in ([root] if root.is_file() else root.rglob("*")):
            if path.is_file():
                data = path.read_bytes()
                assert b"ZZPHIMARKER" not in data and b"ZZID-998877" not in data, path


def test_dicomdir_tree_linkage_survives_exactly(cast):
    # The patient folders of pydicom's dicomdirtests tree (beside them lie DICOMDIR variants).
    root = Path(get_testdata_file("DICOMDIR")).parent
    folders = [root / "77654033", root / "98892001", root / "98892003"]
    cast.project.modalities = [*cast.project.modalities, "CR"]  # ingest refuses modalities a project does not take
    cast.project.save(update_fields=["modalities"])
    for folder in folders:
        call_command("ingest", str(folder), project=cast.project.pk, quiet_files=True)
    assert Study.objects.filter(project=cast.project).count() == 6
    # The tree's own DICOMDIR lists 13 SERIES records (2 patients, 6 studies, 31 images).
    assert Series.objects.filter(study__project=cast.project).count() == 13
    assert Instance.objects.filter(project=cast.project).count() == 31
    assert Study.objects.values("patient_pseudonym").distinct().count() == 2
    originals = {}
    for path in (p for folder in folders for p in folder.rglob("*")):
        if path.is_file():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            originals[ds.SOPInstanceUID] = (ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID)
    secret = project_secret(cast.project)
    for sop, (_, study_uid, series_uid) in originals.items():
        instance = Instance.objects.select_related("series__study").get(sop_instance_uid=replace_uid(sop, secret))
        assert instance.series.series_uid == replace_uid(series_uid, secret)
        assert instance.series.study.study_uid == replace_uid(study_uid, secret)


def test_mr_sequences_and_volume_checks_are_indexed(cast):
    study = synthetic.make_mr_study(sequences=("FLAIR", "T1_POST", "DWI", "ADC", "T2"), seed=5)
    items = [IngestItem(f"{i}", reader=io.BytesIO(synthetic.to_bytes(ds)))
             for i, ds in enumerate(study)]
    gappy = synthetic.make_ct_series(n_slices=8, rows=16, cols=16, seed=6)
    del gappy[4]
    items += [IngestItem(f"ct{i}", reader=io.BytesIO(synthetic.to_bytes(ds))) for i, ds in enumerate(gappy)]
    ingest_files(cast.project, items, by=None, source="folder")
    sequences = set(Series.objects.filter(modality="MR").values_list("mr_sequence", flat=True))
    assert sequences == {"FLAIR", "T1_POST", "DWI", "ADC", "T2"}
    ct = Series.objects.get(modality="CT")
    assert [issue["code"] for issue in ct.geometry_issues] == ["missing_slices"]


def test_burned_in_risk_is_quarantined_until_a_manager_clears_it(cast, api):
    cast.project.modalities = [*cast.project.modalities, "US"]  # ingest refuses modalities a project does not take
    cast.project.save(update_fields=["modalities"])
    ingest_files(cast.project, [IngestItem("us", reader=open(get_testdata_file("US1_UNCR.dcm"), "rb"))],
                 by=None, source="folder")
    instance = Instance.objects.get()
    assert instance.is_quarantined and instance.quarantine_reason
    listing = api(cast.manager).get(f"/api/projects/{cast.project.pk}/quarantine/")
    assert listing.json()["count"] == 1
    url = f"/api/projects/{cast.project.pk}/instances/{instance.pk}/clear-quarantine/"
    assert api(cast.annotator).post(url).status_code == 403
    response = api(cast.manager).post(url)
    assert response.status_code == 200 and response.json()["is_quarantined"] is False
    assert api(cast.manager).post(url).status_code == 409
    assert AuditEvent.objects.filter(action="quarantine_cleared", object_id=str(instance.pk)).exists()


def test_pseudonym_map_only_when_the_project_opts_in_and_only_for_privacy_officers(cast, api, ct_series):
    cast.project.keep_pseudonym_map = True
    cast.project.save()
    ingest_files(cast.project, [IngestItem("a", reader=io.BytesIO(synthetic.to_bytes(ct_series[0])))],
                 by=None, source="folder")
    study = Study.objects.get()
    url = f"/api/projects/{cast.project.pk}/pseudonyms/?kind=study&pseudonym={study.study_uid}"
    assert api(cast.manager).get(url).status_code == 403
    response = api(cast.privacy_officer).get(url)
    assert response.status_code == 200
    assert response.json()["original"] == ct_series[0].StudyInstanceUID
    assert AuditEvent.objects.filter(action="reidentify", actor_id=cast.privacy_officer.pk).exists()


def test_ingest_command_reports_and_fails_when_nothing_ingests(cast, tmp_path, ct_series, capsys):
    synthetic.write_series(ct_series[:3], tmp_path)
    (tmp_path / "readme.txt").write_text("not dicom")
    call_command("ingest", str(tmp_path), project=cast.project.pk)
    out = capsys.readouterr()
    assert "accepted 3" in out.out and "readme.txt" in out.err
    empty = tmp_path / "junk"
    empty.mkdir()
    (empty / "x.txt").write_text("nope")
    with pytest.raises(Exception, match="no file could be ingested"):
        call_command("ingest", str(empty), project=cast.project.pk)


def test_upload_handler_spools_only_ciphertext(ct_series):
    from core.dicom.uploads import EncryptedSpoolUploadHandler

    data = synthetic.to_bytes(ct_series[0])
    handler = EncryptedSpoolUploadHandler(None, max_file_bytes=10 * len(data))
    handler.new_file("files", "a.dcm", "application/dicom", len(data))
    for start in range(0, len(data), 1000):
        handler.receive_data_chunk(data[start:start + 1000], start)
    uploaded = handler.file_complete(len(data))
    raw_file = uploaded.spool._file
    raw_file.seek(0)
    raw = raw_file.read()
    assert len(raw) >= len(data) and data[132:400] not in raw and b"DOE^JANE" not in raw
    assert uploaded.open().read() == data
    uploaded.close()


def test_rotation_reencrypts_objects_and_database_secrets_so_the_old_key_can_go(cast, ct_series, settings):
    import base64

    from core.dicom.ingest import read_pseudonym
    from core.dicom.models import PseudonymMapEntry

    cast.project.keep_pseudonym_map = True
    cast.project.save()
    ingest_files(cast.project, [IngestItem("a", reader=io.BytesIO(synthetic.to_bytes(ct_series[0])))],
                 by=None, source="folder")
    old = settings.RADQUEUE_STORAGE_KEYS
    new_key = "k2:" + base64.b64encode(b"n" * 32).decode()
    settings.RADQUEUE_STORAGE_KEYS = f"{new_key},{old}"
    call_command("rotate_storage_key")
    settings.RADQUEUE_STORAGE_KEYS = new_key  # the old key is gone
    instance = Instance.objects.get()
    assert pydicom.dcmread(io.BytesIO(get_store().read_bytes(instance.storage_name))).SOPInstanceUID == \
        instance.sop_instance_uid
    cast.project.refresh_from_db()
    entry = PseudonymMapEntry.objects.get(kind="study")
    assert read_pseudonym(entry) == ct_series[0].StudyInstanceUID
    again = ingest_files(cast.project, [IngestItem("a", reader=io.BytesIO(synthetic.to_bytes(ct_series[0])))],
                         by=None, source="folder")
    assert again.duplicate == 1  # same project secret: the same UIDs


def test_bulk_ingest_workers_read_paths_and_send_back_only_ciphertext(cast, tmp_path, settings):
    from core.dicom.ingest import prepare_and_seal, project_deid_options

    marked = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    marked.PatientName, marked.PatientID = "ZZPHIMARKER^Alice", "ZZID-998877"
    good = tmp_path / "good.dcm"
    marked.save_as(good)
    prep = prepare_and_seal(str(good), secret=project_secret(cast.project),
                            options=project_deid_options(cast.project), max_bytes=10**8, project_id=cast.project.pk)
    # What a worker process returns: no de-identified bytes, the object as ciphertext (no DICOM
    # preamble in it), and no original identifiers: this project keeps no pseudonym map.
    sealed = Path(prep.sealed.path).read_bytes()
    assert prep.part is None and b"DICM" not in sealed and b"ZZPHIMARKER" not in sealed
    assert prep.original == {} and "ZZPHIMARKER" not in repr(prep)
    kept = prepare_and_seal(str(good), secret=project_secret(cast.project), options=project_deid_options(cast.project),
                            max_bytes=10**8, project_id=cast.project.pk, keep_originals=True)
    assert kept.original["PatientID"] == "ZZID-998877"  # only for a project that keeps the (encrypted) map
    assert not get_store().exists(prep.sealed.obj.name)  # sealing alone stores nothing

    too_big = tmp_path / "big.dcm"
    too_big.write_bytes(good.read_bytes())
    settings.RADQUEUE_MAX_FILE_BYTES = good.stat().st_size - 1
    items = [IngestItem("gone.dcm", path=str(tmp_path / "gone.dcm")),
             IngestItem("big.dcm", path=str(too_big))]
    report = ingest_files(cast.project, iter(items), by=cast.manager, source="folder", workers=2)
    reasons = {f.name: (f.status, f.reason) for f in report.files}
    assert reasons["gone.dcm"][0] == "rejected" and "could not read the file" in reasons["gone.dcm"][1]
    assert reasons["big.dcm"][0] == "rejected" and "exceeds" in reasons["big.dcm"][1]

    settings.RADQUEUE_MAX_FILE_BYTES = 10**8
    report = ingest_files(cast.project, iter([IngestItem("good.dcm", path=str(good))]), by=cast.manager,
                          source="folder", workers=2)
    assert report.accepted == 1
    instance = Instance.objects.get(project=cast.project)
    stored = pydicom.dcmread(get_store().open(instance.storage_name))
    assert stored.PatientID != "ZZID-998877" and "ZZPHIMARKER" not in str(stored.PatientName)
    assert stored.SOPInstanceUID == instance.sop_instance_uid
