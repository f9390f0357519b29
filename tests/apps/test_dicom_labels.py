"""The viewer's DICOM-SEG / RTSTRUCT export and label loading (issue 19, items 1 and 2), on pydicom-data's real
5-slice CT series (16 x 16 pixels), opened the way a user opens it: its files uploaded."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from salt_seg.data import load_volume
from salt_seg.data.dicom_seg import read_dicom_seg, write_dicom_seg
from salt_seg_apps.viewer import actions
from salt_seg_apps.viewer import handlers as h
from salt_seg_apps.viewer.uploads import UploadPolicy

POLICY = UploadPolicy()
NAMES = {1: "liver", 2: "spleen"}


@pytest.fixture()
def ct_files(tmp_path: Path) -> list[Path]:
    from pydicom.data import get_testdata_file

    dst = tmp_path / "ct"
    shutil.copytree(Path(get_testdata_file("dicomdirtests/98892001/CT5N")), dst)
    return sorted(dst.iterdir())


def known_labels(shape: tuple[int, ...]) -> np.ndarray:
    """Two labels on the RAS grid: boxes on slices 1-3 and a different shape on slices 0 and 4."""
    lab = np.zeros(shape, np.uint16)
    lab[2:9, 3:12, 1:4] = 1
    lab[10:14, 4:8, 0] = 2
    lab[11:15, 9:13, 4] = 2
    return lab


def opened_ct(make_session, files: list[Path]):
    s = make_session()
    out = h.on_upload(s, [str(f) for f in files], POLICY)
    assert out["status"].startswith("opened"), out["status"]
    assert s.volume.meta["format"] == "dicom"
    return s


def labelled_ct(make_session, files: list[Path]):
    s = opened_ct(make_session, files)
    for cid, name in NAMES.items():
        s.label_set.names[cid] = name
    s.replace_labels(known_labels(s.ras.shape))
    return s


def test_dicom_seg_export_reads_back_voxel_for_voxel(make_session, ct_files: list[Path]) -> None:
    s = labelled_ct(make_session, ct_files)
    out = h.on_export(s, "DICOM-SEG")
    seg_path, side = (Path(f) for f in out["download"])
    assert seg_path.name == f"{s.volume.name}_labels.seg.dcm" and side.suffix == ".json"
    assert out["status"] == f"exported {seg_path.name} (of the open DICOM series) and {side.name}"
    want = s.volume.geometry.from_ras(s.labels)  # the session's label map on the series' voxel grid
    back, names = read_dicom_seg(seg_path, load_volume(ct_files[0].parent))  # highdicom
    np.testing.assert_array_equal(back, want)
    assert names == NAMES
    ds = pydicom.dcmread(seg_path)
    assert ds.Modality == "SEG" and [x.SegmentLabel for x in ds.SegmentSequence] == ["liver", "spleen"]
    series = {str(pydicom.dcmread(f).SeriesInstanceUID) for f in ct_files}
    assert {str(r.SeriesInstanceUID) for r in ds.ReferencedSeriesSequence} == series
    algo = ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algo.AlgorithmName == "salt_seg"
    assert not s.has_unsaved_labels
    # NIfTI stays the default and still writes the source geometry
    nii, _ = actions.export(s)
    assert nii.name.endswith(".nii.gz")


def test_rtstruct_export_reads_back_within_the_contour_tolerance(make_session, ct_files: list[Path]) -> None:
    pytest.importorskip("rt_utils")
    from scipy import ndimage

    from salt_seg.data.rtstruct import read_rtstruct

    s = labelled_ct(make_session, ct_files)
    yy, xx = np.mgrid[: s.ras.shape[0], : s.ras.shape[1]]
    lab = s.labels.copy()
    lab[..., 2][((yy - 8) ** 2 + (xx - 7) ** 2 <= 20) & (lab[..., 2] == 0)] = 2  # a round shape too
    s.replace_labels(lab)
    rt_path, _ = actions.export(s, fmt="rtstruct")
    assert rt_path.name.endswith(".rtstruct.dcm")
    want = s.volume.geometry.from_ras(s.labels)
    back, names = read_rtstruct(rt_path, load_volume(ct_files[0].parent))
    assert names == NAMES
    # the tolerance stated in salt_seg.data.rtstruct (tests/data/test_rtstruct.py): axis-aligned boxes exactly,
    # a round shape within one boundary pixel
    for k in (0, 1, 3, 4):
        np.testing.assert_array_equal(back[..., k], want[..., k])
    for cid in NAMES:
        got, exp = back[..., 2] == cid, want[..., 2] == cid
        ring = ndimage.binary_dilation(exp) & ~ndimage.binary_erosion(exp)
        assert not ((got ^ exp) & ~ring).any()
        assert 2 * (got & exp).sum() / (got.sum() + exp.sum()) >= 0.9


def test_dicom_export_of_a_nifti_volume_says_so(make_session, ct_nifti: Path) -> None:
    s = make_session()
    h.on_upload(s, [str(ct_nifti)], POLICY)
    s.replace_labels(np.ones(s.ras.shape, np.uint16))
    for choice in ("DICOM-SEG", "RTSTRUCT"):
        out = h.on_export(s, choice)
        assert out["status"] == (
            "⚠️ ct_las: DICOM-SEG and RTSTRUCT export need a volume opened from a DICOM series; this one is a "
            "nifti image: export NIfTI"
        )
        assert "download" not in out
    assert not list(s.workdir.glob("export/*"))  # nothing half-written
    assert h.on_export(s, "NIfTI")["status"].startswith("exported ct_las_labels.nii.gz")


def test_a_seg_loads_onto_the_series_with_its_names(
    make_session, ct_files: list[Path], tmp_path: Path
) -> None:
    """A SEG written from a known label map (the dataset writer) loads onto the open series: labels equal, segment
    names kept as the label names; undo takes it back."""
    vol = load_volume(ct_files[0].parent)
    ras_labels = known_labels(vol.to_ras().shape)
    seg = write_dicom_seg(
        vol.geometry.from_ras(ras_labels), ct_files[0].parent, NAMES, tmp_path / "gt.seg.dcm"
    )
    s = opened_ct(make_session, ct_files)
    out = h.on_load_labels(s, [str(seg)], UploadPolicy(roots=[]))
    assert out["status"] == (
        "loaded label map gt.seg.dcm (segment names kept): labels 1 liver, 2 spleen "
        f"({int(ras_labels.any(axis=(0, 1)).sum())} slice(s) changed)"
    )
    np.testing.assert_array_equal(s.labels, ras_labels)
    assert s.label_set.names == NAMES
    assert not s.has_unsaved_labels
    h.on_undo(s)
    assert not s.labels.any()


def test_an_rtstruct_loads_onto_the_series_with_its_names(
    make_session, ct_files: list[Path], tmp_path: Path
) -> None:
    pytest.importorskip("rt_utils")
    from salt_seg.data.rtstruct import write_rtstruct

    vol = load_volume(ct_files[0].parent)
    ras_labels = known_labels(vol.to_ras().shape)
    rt = write_rtstruct(vol.geometry.from_ras(ras_labels), ct_files[0].parent, NAMES, tmp_path / "gt.dcm")
    s = opened_ct(make_session, ct_files)
    out = h.on_load_labels(s, [str(rt)], UploadPolicy(roots=[]))
    assert out["status"].startswith("loaded label map gt.dcm (segment names kept): labels 1 liver, 2 spleen")
    np.testing.assert_array_equal(s.labels, ras_labels)  # axis-aligned boxes: contours are exact
    assert s.label_set.names == NAMES


def test_a_seg_of_another_series_is_a_one_line_error(
    make_session, ct_files: list[Path], tmp_path: Path
) -> None:
    """The same images under another Series Instance UID: its SEG is refused, naming the file and both series."""
    from pydicom.uid import generate_uid

    from salt_seg.data.dicom import series_key

    other = tmp_path / "other"
    other.mkdir()
    uid = generate_uid()
    for f in ct_files:
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(other / f.name)
    vol = load_volume(other)
    seg = write_dicom_seg(
        vol.geometry.from_ras(known_labels(vol.to_ras().shape)), other, NAMES, tmp_path / "other.seg.dcm"
    )
    s = opened_ct(make_session, ct_files)
    out = h.on_load_labels(s, [str(seg)], UploadPolicy(roots=[]))
    open_key = s.volume.meta["series_key"]
    assert out["status"] == (
        f"⚠️ other.seg.dcm: this DICOM-SEG was drawn on series {series_key(uid)}, not on the open series "
        f"{open_key}; open its series first"
    )
    assert "\n" not in out["status"] and not s.labels.any()


def test_dicom_seg_export_through_the_page(ct_files: list[Path]) -> None:
    """The page's export choice reaches the writer: upload the series, draw, export as DICOM-SEG via the client."""
    from gradio_client import Client, handle_file

    from salt_seg_apps.viewer.app import ViewerApp, ViewerConfig
    from salt_seg_apps.viewer.engine import ModelRegistry
    from tests.apps.conftest import oracle_loaded
    from tests.apps.test_server import DOWNLOAD, STATUS

    app = ViewerApp(ViewerConfig(max_upload_mb=8), ModelRegistry({"oracle": oracle_loaded}))
    app.launch(prevent_thread_lock=True)
    try:
        client = Client(app.demo.local_url, verbose=False)
        out = client.predict([handle_file(str(f)) for f in ct_files], api_name="/upload")
        assert out[STATUS].startswith("opened series-")
        (session,) = app.sessions.sessions()
        session.replace_labels(known_labels(session.ras.shape))
        out = client.predict("DICOM-SEG", api_name="/export")
        assert (
            out[STATUS].startswith("exported series-")
            and ".seg.dcm (of the open DICOM series)" in out[STATUS]
        )
        seg = next(p for p in out[DOWNLOAD] if p.endswith(".seg.dcm"))
        back, _ = read_dicom_seg(seg, load_volume(ct_files[0].parent))
        np.testing.assert_array_equal(back, session.volume.geometry.from_ras(session.labels))
    finally:
        app.close()


def test_rtstruct_without_its_extra_is_a_one_line_message(
    make_session, ct_files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    s = labelled_ct(make_session, ct_files)
    monkeypatch.setitem(sys.modules, "rt_utils", None)  # import fails
    out = h.on_export(s, "RTSTRUCT")
    assert out["status"] == "⚠️ RTSTRUCT needs rt-utils, an optional extra: pip install 'salt-seg[rtstruct]'"
    assert not list(s.workdir.glob("export/*"))
