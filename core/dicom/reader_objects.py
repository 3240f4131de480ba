"""Objects a reader saves from a viewer (DICOM SEG, SR), stored beside the study they annotate.

They are not ingested: their UIDs already are the study's de-identified ones (the viewer built
them from what radqueue served), so ingest's de-identification would remap the references and
break them. What could still carry identity is made safe here instead: the patient and study
attributes are replaced by the stored study's own, person names by the reader's pseudonym,
and private elements are dropped. The object is stored encrypted, as every instance is, and
indexed as a reader object, which only its read's and adjudication's DICOMweb roots serve.
"""

from __future__ import annotations

import io

import pydicom
from django.db import transaction
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from core.dicom.ingest import object_name
from core.dicom.models import Instance, Series, Study
from core.dicom.storage import get_store
from core.errors import DomainError

SEG_CLASSES = {"1.2.840.10008.5.1.4.1.1.66.4": "Segmentation Storage",
               "1.2.840.10008.5.1.4.1.1.66.7": "Label Map Segmentation Storage"}
SR_CLASSES = {"1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR Storage",
              "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR Storage",
              "1.2.840.10008.5.1.4.1.1.88.34": "Comprehensive 3D SR Storage"}

# The study-level attributes a saved object takes from the study it annotates, whatever it carried.
_STUDY_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge",
                   "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
                   "StudyDescription", "StudyInstanceUID")


def kind_of(ds: Dataset) -> str | None:
    """SEG or SR for the object classes a read takes, else None."""
    uid = str(ds.get("SOPClassUID", ""))
    return "SEG" if uid in SEG_CLASSES else "SR" if uid in SR_CLASSES else None


def parse_object(data: bytes, name: str) -> Dataset:
    """A STOW part as a dataset (a DICOM stream with or without the Part 10 preamble), or 400."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        ds.SOPInstanceUID, ds.SOPClassUID, ds.StudyInstanceUID, ds.SeriesInstanceUID  # noqa: B018 - required
    except Exception as exc:  # noqa: BLE001 - any unreadable part is the client's error, named
        raise DomainError(f"{name} is not a DICOM object radqueue can read ({type(exc).__name__}).",
                          code="bad_dicom_object") from None
    return ds


def _study_attributes(study: Study) -> Dataset:
    """The stored study's own patient and study attributes, from one of its original instances."""
    instance = Instance.objects.filter(series__study=study, is_reader_object=False).order_by("id").first()
    with get_store().open(instance.storage_name) as reader:
        header = pydicom.dcmread(reader, stop_before_pixels=True, specific_tags=list(_STUDY_KEYWORDS))
    return header


def made_safe(ds: Dataset, study: Study, *, author: str) -> Dataset:
    """``ds`` with the study's patient and study attributes, every other person name ``author``, and
    no private elements (nothing a viewer or a person typed into them reaches the store)."""
    ds.remove_private_tags()
    source = _study_attributes(study)
    for keyword in _STUDY_KEYWORDS:
        if keyword in source:
            setattr(ds, keyword, source.data_element(keyword).value)
        elif keyword in ds:
            delattr(ds, keyword)

    def rename(dataset, elem):
        if elem.VR == "PN" and elem.keyword not in _STUDY_KEYWORDS:
            elem.value = author

    ds.walk(rename)
    ds.StudyInstanceUID = study.study_uid
    return ds


def _encoded(ds: Dataset) -> bytes:
    """The object as a Part 10 file, in its own transfer syntax when it has one (RLE stays RLE)."""
    if not getattr(ds, "file_meta", None):
        ds.file_meta = FileMetaDataset()
    meta = ds.file_meta
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    if "TransferSyntaxUID" not in meta:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def store_reader_object(study: Study, ds: Dataset, *, description: str = "") -> Instance:
    """Store ``ds`` (made safe already) encrypted and index it as a reader object of ``study``. The
    caller's transaction holds the rows; the stored object is removed again if indexing it fails (a
    rollback of the caller's transaction after that leaves an encrypted object no row names, which
    nothing serves)."""
    if Instance.objects.filter(project_id=study.project_id, sop_instance_uid=ds.SOPInstanceUID).exists():
        raise DomainError(f"An object with SOP Instance UID {ds.SOPInstanceUID} is stored already; a new "
                          "save needs a new SOPInstanceUID.", code="duplicate_object", status=409)
    data = _encoded(ds)
    uids = {"StudyInstanceUID": study.study_uid, "SeriesInstanceUID": str(ds.SeriesInstanceUID),
            "SOPInstanceUID": str(ds.SOPInstanceUID)}
    name = object_name(study.project_id, uids)
    stored = get_store().put_bytes(name, data)
    try:
        with transaction.atomic():
            series, created = Series.objects.get_or_create(
                study=study, series_uid=uids["SeriesInstanceUID"],
                defaults={"modality": str(ds.get("Modality", "")) or kind_of(ds) or "OT", "is_reader_object": True,
                          "description": str(ds.get("SeriesDescription", description))[:200],
                          "number": int(ds.SeriesNumber) if ds.get("SeriesNumber") not in (None, "") else None})
            if not created and not series.is_reader_object:
                raise DomainError("The object's SeriesInstanceUID is one of the study's original series; a "
                                  "saved object needs a series of its own.", code="bad_dicom_object")
            instance = Instance.objects.create(
                project_id=study.project_id, series=series, sop_instance_uid=uids["SOPInstanceUID"],
                sop_class_uid=str(ds.SOPClassUID), is_reader_object=True,
                instance_number=int(ds.InstanceNumber) if ds.get("InstanceNumber") not in (None, "") else None,
                transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                rows=int(ds.Rows) if "Rows" in ds else None, columns=int(ds.Columns) if "Columns" in ds else None,
                frames=int(ds.get("NumberOfFrames", 1) or 1) if "Rows" in ds else 1,
                size_bytes=stored.size, sha256=stored.sha256, storage_name=name)
            Series.objects.filter(pk=series.pk).update(instance_count=series.instances.count())
    except BaseException:
        get_store().delete(name)
        raise
    return instance
