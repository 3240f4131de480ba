"""DICOM Segmentation (binary SEG) of a task's masks, one instance per series, made with highdicom.

Each mask finding is one segment; frames reference the source instances they were segmented on
(the de-identified datasets read back from the encrypted store), so every UID resolves to an
ingested instance.
"""

import io

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes

from tasks.exports.dicom_common import concept_of, device, mask_of, pseudonymous_patient_names
from tasks.findings.masks import rle_decode


def segmentations(task, sources) -> list[tuple[str, bytes]]:
    """(series UID, SEG bytes) for each series of the task that has masks in its consensus."""
    by_series: dict[str, list[dict]] = {}
    for finding in task.consensus.findings:
        if (mask := mask_of(finding)) is not None:
            by_series.setdefault(mask["series_uid"], []).append(finding)
    out = []
    for number, (series_uid, findings) in enumerate(sorted(by_series.items()), start=1):
        source_images = sources.series_datasets(series_uid)
        pixels = np.stack([rle_decode(f["mask"]["rle"], f["mask"]["shape"]) for f in findings], axis=-1)
        descriptions = [hd.seg.SegmentDescription(
            segment_number=n, segment_label=f["label"][:64],
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=concept_of(f), algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            tracking_uid=hd.UID(), tracking_id=f"task {task.pk} finding {n}")
            for n, f in enumerate(findings, start=1)]
        with pseudonymous_patient_names():
            seg = hd.seg.Segmentation(
                source_images=source_images, pixel_array=pixels.astype(np.uint8),
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
                series_instance_uid=hd.UID(), series_number=9000 + number, sop_instance_uid=hd.UID(),
                instance_number=1, content_label="CONSENSUS",
                content_description=f"radqueue task {task.pk} consensus", **device())
        buffer = io.BytesIO()
        seg.save_as(buffer)
        out.append((series_uid, buffer.getvalue()))
    return out
