"""NIfTI-1 masks (nibabel), one file per mask finding, with the affine of the source series.

DICOM patient coordinates are LPS (x to the patient's left, y posterior, z head); NIfTI's are RAS
(x right, y anterior, z head). The affine core.dicom.volume derives from the DICOM geometry maps
(column i, row j, slice k) to LPS; the file carries ``diag(-1, -1, 1, 1) @ affine``, i.e. RAS, and
the data array is indexed [i, j, k] (column, row, slice), slice k=0 the most negative along the
slice normal, the same order as the masks' run lengths. Both sform and qform are set (code 1,
scanner anatomical).
"""

import gzip

import nibabel as nib
import numpy as np

from core.dicom.volume import load_volume
from tasks.exports.dicom_common import mask_of
from tasks.findings.masks import rle_decode


def nifti_masks(task, sources) -> list[tuple[int, dict, bytes]]:
    """(finding index, finding, .nii.gz bytes) for each mask finding of the task's consensus."""
    out = []
    affines: dict[str, np.ndarray] = {}
    for index, finding in enumerate(task.consensus.findings):
        mask = mask_of(finding)
        if mask is None:
            continue
        series_uid = mask["series_uid"]
        if series_uid not in affines:
            datasets = sources.series_datasets(series_uid)
            volume = load_volume(datasets)
            expected = tuple(g.sop_instance_uid for g in sources.geometry.series[series_uid].instances)
            if volume.sop_instance_uids != expected:
                raise ValueError(f"series {series_uid}: the volume's slice order differs from the masks' order")
            affines[series_uid] = volume.affine_ras()
        data = rle_decode(mask["rle"], mask["shape"]).transpose(2, 1, 0).astype(np.uint8)
        image = nib.Nifti1Image(data, affines[series_uid])
        image.set_sform(affines[series_uid], code=1)
        image.set_qform(affines[series_uid], code=1)
        image.header["descrip"] = f"radqueue task {task.pk} {finding['label']}"[:79].encode()
        raw = image.to_bytes()
        out.append((index, finding, gzip.compress(raw, mtime=0)))
    return out


def read_nifti(data: bytes) -> nib.Nifti1Image:
    """A .nii.gz back from its bytes (tests and clients' sanity checks)."""
    return nib.Nifti1Image.from_bytes(gzip.decompress(data))

