import copy
import random

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from core.dicom import synthetic
from core.dicom.volume import Volume, check_series, decode_frames, geometry_of, load_volume

SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


def series(**kwargs):
    kwargs.setdefault("n_slices", 10)
    kwargs.setdefault("rows", 24)
    kwargs.setdefault("cols", 28)
    return synthetic.make_ct_series(**kwargs)


def geoms(datasets):
    return [g for ds in datasets for g in geometry_of(ds)]


def codes(datasets):
    return sorted({issue["code"] for issue in check_series(geoms(datasets))})


def voxel_to_patient(volume: Volume, i, j, k):
    return (volume.affine @ np.array([i, j, k, 1.0]))[:3]


def rotation(a, b, c):
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def copy_of(ds, **changes):
    clone = copy.deepcopy(ds)
    clone.SOPInstanceUID = generate_uid()
    for keyword, value in changes.items():
        setattr(clone, keyword, value)
    return clone


# --- load_volume -----------------------------------------------------------------------------------

def test_volume_shape_spacing_and_affine_match_the_slices():
    slices = series(spacing=(0.8, 0.6), slice_thickness=2.0)
    volume = load_volume(slices)
    assert volume.array.shape == (10, 24, 28) and volume.array.dtype == np.float32
    assert volume.spacing == pytest.approx((2.0, 0.8, 0.6))
    for k, ds in enumerate(slices):
        assert voxel_to_patient(volume, 0, 0, k) == pytest.approx([float(v) for v in ds.ImagePositionPatient])
    origin = np.array([float(v) for v in slices[0].ImagePositionPatient])
    assert voxel_to_patient(volume, 5, 0, 0) == pytest.approx(origin + [5 * 0.6, 0, 0])
    assert voxel_to_patient(volume, 0, 3, 0) == pytest.approx(origin + [0, 3 * 0.8, 0])
    assert volume.sop_instance_uids == tuple(ds.SOPInstanceUID for ds in slices)


def test_affine_ras_flips_the_first_two_axes():
    volume = load_volume(series())
    ras = volume.affine_ras()
    assert ras[0] == pytest.approx(-volume.affine[0]) and ras[1] == pytest.approx(-volume.affine[1])
    assert ras[2:] == pytest.approx(volume.affine[2:])


def test_shuffled_slices_are_sorted_along_the_normal():
    slices = series()
    expected = load_volume(slices)
    shuffled = slices[:]
    random.Random(3).shuffle(shuffled)
    volume = load_volume(shuffled)
    assert volume.sop_instance_uids == expected.sop_instance_uids
    assert np.array_equal(volume.array, expected.array)
    assert np.allclose(volume.affine, expected.affine)


def test_slices_numbered_head_to_foot_still_start_at_the_lowest_position():
    slices = series()
    for number, ds in enumerate(reversed(slices), start=1):
        ds.InstanceNumber = number
    volume = load_volume(slices)
    assert volume.affine[2, 2] > 0
    assert voxel_to_patient(volume, 0, 0, 0)[2] == pytest.approx(float(slices[0].ImagePositionPatient[2]))


def test_oblique_orientation_is_handled():
    r = rotation(0.3, -0.2, 0.5)
    slices = series(orientation=(*r[:, 0], *r[:, 1]), slice_thickness=3.0, rows=64, cols=64)
    assert check_series(geoms(slices)) == []
    volume = load_volume(slices[::-1])
    for k, ds in enumerate(slices):
        assert voxel_to_patient(volume, 0, 0, k) == pytest.approx([float(v) for v in ds.ImagePositionPatient], abs=1e-4)
    assert volume.affine[:3, 0] == pytest.approx(r[:, 0] * 0.7, abs=1e-6)
    assert volume.affine[:3, 2] == pytest.approx(r[:, 2] * 3.0, abs=1e-4)
    # The phantom is defined in patient space: the centre of the stack is soft tissue whatever the angle.
    assert float(np.median(volume.array[5, 30:34, 30:34])) == pytest.approx(40, abs=10)


def test_gantry_tilt_gives_a_sheared_affine():
    slices = series()
    for k, ds in enumerate(slices):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + 0.5 * k, z]
    volume = load_volume(slices)
    assert volume.affine[:3, 2] == pytest.approx([0, 0.5, 2.5])
    assert voxel_to_patient(volume, 0, 0, 9) == pytest.approx([float(v) for v in slices[9].ImagePositionPatient])


def test_rescale_gives_hounsfield_units():
    volume = load_volume(series(n_slices=6, rows=64, cols=64))
    assert float(np.median(volume.array[:, 30:34, 30:34])) == pytest.approx(40, abs=8)
    assert float(np.median(volume.array[:, :3, :3])) == pytest.approx(-1000, abs=8)
    assert np.isclose(volume.array, 150, atol=35).sum() > 0  # a lesion


def test_a_single_slice_uses_its_thickness_as_the_step():
    volume = load_volume(series(n_slices=1, slice_thickness=1.5))
    assert volume.array.shape == (1, 24, 28)
    assert volume.spacing[0] == pytest.approx(1.5)


def test_localizers_are_left_out_of_the_volume():
    slices = series()
    scout = copy_of(slices[0], ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"],
                    ImageOrientationPatient=list(SAGITTAL))
    volume = load_volume([scout, *slices])
    assert volume.array.shape[0] == 10 and scout.SOPInstanceUID not in volume.sop_instance_uids


@pytest.mark.parametrize("damage, code", [
    (lambda s: s[:4] + s[6:], "missing_slices"),
    (lambda s: s + [copy_of(s[3])], "duplicate_slices"),
    (lambda s: s[:5] + [copy_of(d, ImageOrientationPatient=list(SAGITTAL)) for d in s[5:]], "mixed_orientation"),
    (lambda s: s[:-1] + [copy_of(s[-1], PixelSpacing=[0.5, 0.5])], "mixed_size"),
])
def test_inconsistent_series_refuse_to_load(damage, code):
    with pytest.raises(ValueError, match=code):
        load_volume(damage(series()))


def test_refusals_name_the_problem():
    with pytest.raises(ValueError, match="no images"):
        load_volume([])
    rgb = pydicom.dcmread(get_testdata_file("SC_rgb_rle.dcm"))
    rgb.ImagePositionPatient, rgb.ImageOrientationPatient, rgb.PixelSpacing = [0, 0, 0], [1, 0, 0, 0, 1, 0], [1, 1]
    with pytest.raises(ValueError, match="colour"):
        load_volume([rgb])
    no_position = series(n_slices=3)
    del no_position[1].ImagePositionPatient
    with pytest.raises(ValueError, match="no_geometry"):
        load_volume(no_position)


# --- check_series ----------------------------------------------------------------------------------

def test_a_clean_series_has_no_issues():
    assert check_series(geoms(series())) == []


def test_missing_slices_are_found_with_where():
    slices = series()
    issues = check_series(geoms(slices[:4] + slices[7:]))
    assert [i["code"] for i in issues] == ["missing_slices"]
    z3, z7 = float(slices[3].ImagePositionPatient[2]), float(slices[7].ImagePositionPatient[2])
    assert f"between {z3:.2f} and {z7:.2f} mm" in issues[0]["detail"]
    assert "about 3 missing" in issues[0]["detail"]


def test_duplicate_slices_are_found():
    slices = series()
    twin = copy_of(slices[2])
    issues = check_series(geoms(slices + [twin]))
    assert [i["code"] for i in issues] == ["duplicate_slices"]
    assert twin.SOPInstanceUID in issues[0]["detail"]


def test_uneven_spacing_is_found():
    slices = series()
    x, y, z = (float(v) for v in slices[4].ImagePositionPatient)
    slices[4].ImagePositionPatient = [x, y, z + 0.4]
    assert codes(slices) == ["uneven_spacing"]


def test_position_noise_below_tolerance_is_not_uneven():
    slices = series()
    for k, ds in enumerate(slices):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + (0.004 if k % 2 else -0.004)]
    assert codes(slices) == []


def test_mixed_orientation_is_found():
    slices = series()
    mixed = slices[:5] + [copy_of(d, ImageOrientationPatient=list(SAGITTAL)) for d in slices[5:]]
    assert codes(mixed) == ["mixed_orientation"]


def test_a_localizer_is_found_by_image_type():
    slices = series()
    scout = copy_of(slices[0], ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    issues = check_series(geoms(slices + [scout]))
    assert [i["code"] for i in issues] == ["localizer_mixed_in"]
    assert scout.SOPInstanceUID in issues[0]["detail"]


def test_a_stray_orientation_is_taken_for_a_localizer():
    slices = series()
    stray = copy_of(slices[0], ImageOrientationPatient=list(SAGITTAL))
    issues = check_series(geoms(slices + [stray]))
    assert [i["code"] for i in issues] == ["localizer_mixed_in"]
    assert "look like localizers" in issues[0]["detail"]


@pytest.mark.parametrize("changes", [{"Rows": 30}, {"PixelSpacing": [0.5, 0.5]}])
def test_mixed_sizes_are_found(changes):
    slices = series()
    slices[3] = copy_of(slices[3], **changes)
    assert codes(slices) == ["mixed_size"]


def test_missing_geometry_is_found():
    assert codes([]) == ["no_geometry"]
    slices = series()
    del slices[0].ImageOrientationPatient
    assert codes(slices) == ["no_geometry"]
    for ds in slices:
        ds.ImagePositionPatient = None
    assert codes(slices) == ["no_geometry"]


def test_geometry_of_a_classic_image():
    ds = series(n_slices=1)[0]
    (g,) = geometry_of(ds)
    assert g.sop_instance_uid == ds.SOPInstanceUID
    assert g.position == tuple(float(v) for v in ds.ImagePositionPatient)
    assert g.orientation == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    assert g.pixel_spacing == (0.7, 0.7) and g.slice_thickness == 2.5
    assert (g.rows, g.columns, g.frames, g.instance_number) == (24, 28, 1, 1)
    assert g.image_type == ("ORIGINAL", "PRIMARY", "AXIAL") and not g.is_localizer


# --- Enhanced multi-frame --------------------------------------------------------------------------

def test_enhanced_ct_gives_one_geometry_per_frame_and_the_same_volume():
    enhanced = synthetic.make_enhanced_ct(8, 24, 28, seed=5)
    enhanced = pydicom.dcmread(pydicom.filebase.DicomBytesIO(synthetic.to_bytes(enhanced)))
    frames = geometry_of(enhanced)
    assert [g.frame_index for g in frames] == list(range(8))
    assert all(g.frames == 8 and g.orientation and g.pixel_spacing == (0.7, 0.7) for g in frames)
    assert check_series(frames) == []
    classic = load_volume(synthetic.make_ct_series(8, 24, 28, seed=5))
    volume = load_volume([enhanced])
    assert np.array_equal(volume.array, classic.array)
    assert np.allclose(volume.affine, classic.affine)


def test_enhanced_frames_stored_out_of_order_are_sorted():
    enhanced = synthetic.make_enhanced_ct(6, 16, 16)
    expected = load_volume([enhanced])
    order = [3, 0, 5, 1, 4, 2]
    pixels = enhanced.pixel_array
    enhanced.PerFrameFunctionalGroupsSequence = Sequence([enhanced.PerFrameFunctionalGroupsSequence[i] for i in order])
    enhanced.PixelData = pixels[order].astype("<i2").tobytes()
    volume = load_volume([enhanced])
    assert np.array_equal(volume.array, expected.array)


def test_classic_multi_frame_without_geometry_is_not_a_volume():
    us = pydicom.dcmread(get_testdata_file("examples_ybr_color.dcm"))
    assert us.pixel_array.shape == (30, 240, 320, 3)  # JPEG Baseline, multi-frame, decoded
    (g,) = geometry_of(us)
    assert g.frames == 30 and g.position is None
    with pytest.raises(ValueError, match="multi-frame"):
        load_volume([us])


# --- Compressed transfer syntaxes ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["MR_small_jp2klossless.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm"])
def test_compressed_images_load_like_the_uncompressed_one(name):
    reference = load_volume([pydicom.dcmread(get_testdata_file("MR_small.dcm"))])
    volume = load_volume([pydicom.dcmread(get_testdata_file(name))])
    assert np.array_equal(volume.array, reference.array)
    assert np.allclose(volume.affine, reference.affine)


def test_jpeg_lossless_decodes(tmp_path):
    gdcm = pytest.importorskip("gdcm")
    reader = gdcm.ImageReader()
    reader.SetFileName(get_testdata_file("MR_small.dcm"))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    writer.SetFileName(str(tmp_path / "lossless.dcm"))
    assert writer.Write()
    ds = pydicom.dcmread(tmp_path / "lossless.dcm")
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGLosslessSV1
    reference = decode_frames(pydicom.dcmread(get_testdata_file("MR_small.dcm")))
    assert np.array_equal(decode_frames(ds), reference)


def test_lossy_jpeg2000_ct_loads_with_rescale():
    ds = pydicom.dcmread(get_testdata_file("693_J2KI.dcm"))
    volume = load_volume([ds])
    assert volume.array.shape == (1, 512, 512)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert np.allclose(volume.array[0], expected)


def test_twelve_bit_jpeg_extended_is_refused_by_name():
    ds = pydicom.dcmread(get_testdata_file("JPGExtended.dcm"))
    try:
        frames = decode_frames(ds)
    except ValueError as exc:
        assert "JPEG Extended" in str(exc)
    else:  # a JPEG Extended decoder is installed after all
        assert frames.shape == (1, ds.Rows, ds.Columns)
