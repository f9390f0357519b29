"""Export in the source geometry (issue 7, acceptance 1), atomic writes and overwrite refusal."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from salt_seg.data import Volume, load_volume, prepare_volume
from salt_seg.inference import read_source_header, write_label_map, write_probability_map
from salt_seg.io import save_nifti
from salt_seg.preprocessing import Preprocessing
from tests.data.conftest import write_dicom_series, write_nifti
from tests.inference.conftest import AFFINES

NAMES = {1: "liver", 2: "tumour"}


def known_mask(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Two overlapping-free blobs with labels 1 and 2 and a few random voxels: any misplacement shows."""
    rng = np.random.default_rng(seed)
    m = np.zeros(shape, dtype=np.uint8)
    m[2:9, 3:7, 1:4] = 1
    m[-6:-2, -5:-1, -3:] = 2
    idx = tuple(rng.integers(0, s, 15) for s in shape)
    m[idx] = rng.integers(1, 3, 15)
    return m


def round_trip(image_path: Path, mask: np.ndarray, out: Path, record: Preprocessing) -> nib.Nifti1Image:
    """Read the image as predict does, carry ``mask`` through the pipeline onto the model grid, and export it."""
    volume = load_volume(image_path)
    label = Volume(mask.astype(np.float32), volume.affine, modality="label")
    prepared = prepare_volume(volume, record, label=label)
    assert prepared.label is not None
    labels = prepared.to_source(prepared.label, order=0)
    write_label_map(out, labels, prepared.source, NAMES, header=read_source_header(image_path))
    return nib.load(str(out))


@pytest.mark.parametrize("kind", ["ras", "las", "oblique", "permuted"])
def test_nifti_geometry_round_trip(tmp_path: Path, kind: str) -> None:
    affine = AFFINES[kind]
    shape = (14, 11, 6)
    image = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    src = write_nifti(tmp_path / f"{kind}.nii.gz", image, affine)
    mask = known_mask(shape)
    got = round_trip(src, mask, tmp_path / "out" / f"{kind}.nii.gz", Preprocessing(image_size=64))
    ref = nib.load(str(src))
    assert got.shape == ref.shape == shape
    assert got.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(got.dataobj), mask)
    np.testing.assert_allclose(got.affine, ref.affine, atol=1e-5)
    np.testing.assert_allclose(got.header.get_sform(), ref.header.get_sform(), atol=1e-5)
    np.testing.assert_allclose(got.header.get_qform(), ref.header.get_qform(), atol=1e-5)
    assert int(got.header["sform_code"]) == int(ref.header["sform_code"]) == 1
    assert int(got.header["qform_code"]) == int(ref.header["qform_code"]) == 1
    np.testing.assert_allclose(got.header.get_zooms(), ref.header.get_zooms(), atol=1e-6)
    assert nib.aff2axcodes(got.affine) == nib.aff2axcodes(ref.affine)
    assert int(got.header["intent_code"]) == 1002  # NIFTI_INTENT_LABEL


def test_header_codes_and_distinct_qform_are_kept(tmp_path: Path) -> None:
    """A file whose sform (code 2, aligned) and qform (code 1, scanner) differ keeps both, with their codes."""
    shape = (10, 9, 4)
    sform = AFFINES["oblique"]
    qform = AFFINES["ras"]
    img = nib.Nifti1Image(np.zeros(shape, np.int16), None)
    img.header.set_sform(sform, code=2)
    img.header.set_qform(qform, code=1)
    src = tmp_path / "codes.nii"
    nib.save(img, str(src))
    mask = known_mask(shape)
    got = round_trip(src, mask, tmp_path / "codes_out.nii.gz", Preprocessing(image_size=32))
    np.testing.assert_array_equal(np.asanyarray(got.dataobj), mask)
    assert int(got.header["sform_code"]) == 2 and int(got.header["qform_code"]) == 1
    np.testing.assert_allclose(got.header.get_sform(), sform, atol=1e-5)
    np.testing.assert_allclose(got.header.get_qform(), qform, atol=1e-5)


def dicom_affine(row_cos, col_cos, pixel_spacing, step, origin) -> np.ndarray:
    """The RAS affine of a DICOM series computed from its tags by hand (LPS -> RAS)."""
    lps = np.eye(4)
    lps[:3, 0] = np.asarray(row_cos) * pixel_spacing[1]
    lps[:3, 1] = np.asarray(col_cos) * pixel_spacing[0]
    lps[:3, 2] = step
    lps[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def test_dicom_series_geometry_round_trip(tmp_path: Path) -> None:
    import SimpleITK as sitk

    t = np.radians(25.0)
    row_cos = np.array([np.cos(t), np.sin(t), 0.0])
    col_cos = np.array([0.0, 0.0, -1.0])  # an oblique coronal-ish stack
    normal = np.cross(row_cos, col_cos)
    frames = np.random.default_rng(2).integers(0, 2000, size=(7, 12, 10)).astype(np.int16)
    origin = np.array([-50.0, -60.0, 10.0])
    gap = 2.5
    positions = [origin + k * gap * normal for k in range(7)]
    names = [f"im{n}.dcm" for n in (3, 0, 6, 1, 5, 2, 4)]  # file order != slice order
    folder = tmp_path / "series"
    write_dicom_series(
        folder,
        frames,
        pixel_spacing=(0.7, 0.6),
        positions=positions,
        orientation=(*row_cos, *col_cos),
        slice_gap=gap,
        file_names=names,
    )
    mask_frames = known_mask((7, 12, 10), seed=3)  # k x row x col, like the frames
    mask = np.transpose(mask_frames, (2, 1, 0))  # voxel order (column i, row j, slice k)
    got = round_trip(folder, mask, tmp_path / "series.nii.gz", Preprocessing(image_size=32, intensity="ct"))
    expected = dicom_affine(row_cos, col_cos, (0.7, 0.6), gap * normal, origin)
    np.testing.assert_array_equal(np.asanyarray(got.dataobj), mask)
    np.testing.assert_allclose(got.affine, expected, atol=1e-4)
    assert int(got.header["sform_code"]) == 1 and int(got.header["qform_code"]) == 1
    # independent check: SimpleITK (GDCM) reading the series and our NIfTI agree voxel for voxel in space
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    dcm = reader.Execute()
    nii = sitk.ReadImage(str(tmp_path / "series.nii.gz"))
    assert dcm.GetSize() == nii.GetSize() == (10, 12, 7)
    for idx in [(0, 0, 0), (9, 0, 0), (0, 11, 0), (0, 0, 6), (9, 11, 6), (4, 7, 3)]:
        np.testing.assert_allclose(
            dcm.TransformIndexToPhysicalPoint(idx), nii.TransformIndexToPhysicalPoint(idx), atol=1e-3
        )
    np.testing.assert_array_equal(sitk.GetArrayFromImage(nii), mask_frames)


def test_uint16_for_large_class_ids(tmp_path: Path) -> None:
    from salt_seg.data.volume import Geometry

    labels = np.zeros((4, 4, 2), np.int64)
    labels[1, 1, 1] = 300
    path = write_label_map(
        tmp_path / "big.nii.gz", labels, Geometry(np.eye(4), (4, 4, 2)), {300: "x", 1: "y"}
    )
    img = nib.load(str(path))
    assert img.get_data_dtype() == np.uint16
    assert int(np.asanyarray(img.dataobj)[1, 1, 1]) == 300
    with pytest.raises(ValueError, match=r"label values \[300\] are not among"):
        write_label_map(tmp_path / "bad.nii.gz", labels, Geometry(np.eye(4), (4, 4, 2)), {1: "y"})
    with pytest.raises(ValueError, match="not the source shape"):
        write_label_map(tmp_path / "bad.nii.gz", labels, Geometry(np.eye(4), (4, 4, 3)))


def test_sheared_affine_keeps_sform_and_disables_qform(tmp_path: Path) -> None:
    """A gantry-tilted DICOM affine has shear: a qform cannot hold it, so its code is 0 and the sform is exact."""
    from salt_seg.data.volume import Geometry

    a = np.diag([0.7, 0.7, 2.5, 1.0])
    a[1, 2] = 0.6  # slices step sideways along y: shear
    path = write_label_map(tmp_path / "shear.nii.gz", np.ones((3, 3, 3), np.uint8), Geometry(a, (3, 3, 3)))
    img = nib.load(str(path))
    assert int(img.header["qform_code"]) == 0 and int(img.header["sform_code"]) == 1
    np.testing.assert_allclose(img.affine, a, atol=1e-6)


def test_probability_map_is_4d_scaled_uint8(tmp_path: Path) -> None:
    from salt_seg.data.volume import Geometry

    p = np.zeros((2, 5, 4, 3), np.float32)
    p[0, 1, 2, 0] = 0.5
    p[1, 4, 3, 2] = 1.0
    affine = AFFINES["las"]
    path = write_probability_map(tmp_path / "p.nii.gz", p, Geometry(affine, (5, 4, 3)))
    img = nib.load(str(path))
    assert img.shape == (5, 4, 3, 2) and img.get_data_dtype() == np.uint8
    data = img.get_fdata()
    assert data[1, 2, 0, 0] == pytest.approx(128 / 255)
    assert data[4, 3, 2, 1] == pytest.approx(1.0)
    assert float(data.sum()) == pytest.approx(128 / 255 + 1.0)
    np.testing.assert_allclose(img.affine, affine)


def test_existing_output_is_not_overwritten(tmp_path: Path) -> None:
    from salt_seg.data.volume import Geometry

    g = Geometry(np.eye(4), (3, 3, 3))
    path = write_label_map(tmp_path / "m.nii.gz", np.ones((3, 3, 3), np.uint8), g)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match=r"m.nii.gz: exists; pass --force"):
        write_label_map(path, np.zeros((3, 3, 3), np.uint8), g)
    assert path.read_bytes() == before
    write_label_map(path, np.zeros((3, 3, 3), np.uint8), g, overwrite=True)
    assert int(np.asanyarray(nib.load(str(path)).dataobj).sum()) == 0


def test_writes_are_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer that dies half-way leaves neither a partial output nor a temporary file, and the old file intact."""
    from salt_seg.data.volume import Geometry

    g = Geometry(np.eye(4), (3, 3, 3))
    path = write_label_map(tmp_path / "m.nii.gz", np.ones((3, 3, 3), np.uint8), g)
    before = path.read_bytes()
    real_save = nib.save

    def dying_save(img, filename):
        real_save(img, filename)
        Path(filename).write_bytes(Path(filename).read_bytes()[:20])  # half-written
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", dying_save)
    with pytest.raises(OSError, match="disk full"):
        write_label_map(path, np.zeros((3, 3, 3), np.uint8), g, overwrite=True)
    with pytest.raises(OSError, match="disk full"):
        save_nifti(tmp_path / "new.nii.gz", np.zeros((2, 2, 2), np.uint8), np.eye(4))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.nii.gz"]
