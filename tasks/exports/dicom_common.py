"""What the DICOM exports share: the producing device's identity and coded concepts of labels."""

import contextlib
import warnings

import highdicom as hd

from tasks.exports.manifest import software_version

MANUFACTURER = "radqueue"


def device() -> dict:
    """Manufacturer, model, software version and serial of the generated SEG / SR instances."""
    return {"manufacturer": MANUFACTURER, "manufacturer_model_name": "radqueue delivery export",
            "software_versions": software_version(), "device_serial_number": "radqueue"}


def concept_of(finding: dict) -> hd.sr.CodedConcept:
    """The finding's label as a coded concept (the protocol's code, or a private radqueue code)."""
    concept = finding.get("concept") or {}
    if concept.get("code") and concept.get("scheme"):
        return hd.sr.CodedConcept(concept["code"], concept["scheme"], concept.get("meaning") or finding["label"])
    return hd.sr.CodedConcept(finding["label"][:16], "99RADQUEUE", finding["label"])


def mask_of(finding: dict) -> dict | None:
    """The mask geometry of a mask finding or of a measurement drawn as a mask."""
    mask = finding.get("mask")
    return mask if isinstance(mask, dict) and "rle" in mask else None


@contextlib.contextmanager
def pseudonymous_patient_names():
    """De-identified PatientName is a one-component pseudonym (RQ-...); highdicom warns about that when it copies
    the patient module from the source images. The name is right as it is."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
        yield
