"""MR sequence type from the acquisition tags, read before de-identification removes descriptions.

Descriptions are vendor free text, so the physics tags decide first: a diffusion b-value or an
ADC image type, an inversion time with long TR (FLAIR), a contrast agent (post-contrast T1),
then TR/TE weighting (T1: short TR and TE; T2: long TR and TE), then the description as a hint.
"""

import re
from enum import StrEnum


class MRSequence(StrEnum):
    """Values of Series.mr_sequence (this module has no Django imports: it runs in ingest workers)."""

    T1 = "T1"
    T1_POST = "T1_POST"
    T2 = "T2"
    FLAIR = "FLAIR"
    DWI = "DWI"
    ADC = "ADC"
    OTHER = "OTHER"


LABELS = {
    MRSequence.T1: "T1-weighted", MRSequence.T1_POST: "T1-weighted post-contrast", MRSequence.T2: "T2-weighted",
    MRSequence.FLAIR: "FLAIR", MRSequence.DWI: "Diffusion-weighted", MRSequence.ADC: "ADC map",
    MRSequence.OTHER: "Other",
}

_DESCRIPTION_HINTS = [
    (re.compile(r"\badc\b|apparent diff", re.I), MRSequence.ADC),
    (re.compile(r"\bdwi\b|diffusion|\btrace\b|\bb\d{3,4}\b", re.I), MRSequence.DWI),
    (re.compile(r"flair", re.I), MRSequence.FLAIR),
    (re.compile(r"t1.*(post|\+c|gad|gd|contrast)|(post|gad|gd).*t1|mprage.*(post|gd)", re.I), MRSequence.T1_POST),
    (re.compile(r"\bt2\b|t2w|t2_|tse.*t2", re.I), MRSequence.T2),
    (re.compile(r"\bt1\b|t1w|t1_|mprage|spgr", re.I), MRSequence.T1),
]


def _float(ds, keyword) -> float | None:
    try:
        value = ds.get(keyword)
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def mr_sequence_type(ds) -> str:
    """One of MRSequence's values for an MR dataset; '' for other modalities."""
    if getattr(ds, "Modality", "") != "MR":
        return ""
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if "ADC" in image_type:
        return MRSequence.ADC
    b_value = _float(ds, "DiffusionBValue")
    if (b_value or 0) > 0 or "DIFFUSION" in image_type or "TRACEW" in image_type:
        return MRSequence.DWI
    tr, te, ti = _float(ds, "RepetitionTime"), _float(ds, "EchoTime"), _float(ds, "InversionTime")
    description = " ".join(str(ds.get(k, "")) for k in ("SeriesDescription", "ProtocolName", "SequenceName"))
    hinted = next((seq for pattern, seq in _DESCRIPTION_HINTS if pattern.search(description)), None)
    if ti is not None and ti >= 1500 and (tr or 0) >= 5000:
        return MRSequence.FLAIR
    contrast = bool(str(ds.get("ContrastBolusAgent", "")).strip())
    if tr is not None and te is not None:
        if tr < 1000 and te < 30:
            return MRSequence.T1_POST if contrast or hinted == MRSequence.T1_POST else MRSequence.T1
        if tr >= 2000 and te >= 70:
            return MRSequence.FLAIR if hinted == MRSequence.FLAIR else MRSequence.T2
    if hinted is not None:
        return hinted
    return MRSequence.OTHER
