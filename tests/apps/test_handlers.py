"""Handler-level tests of the viewer (acceptance 1): clicks to voxels on every axis, boxes, undo, propagation,
export geometry, automatic segmentation, label maps, prompt files, uploads and their errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import gradio as gr
import nibabel as nib
import numpy as np
import pytest

from salt_seg.data import load_volume, prepare_volume
from salt_seg.data.volume import extract_slice, voxel_to_slice
from salt_seg.inference.backend import PredictorBackend
from salt_seg.inference.propagation import box_from_mask, propagate_many
from salt_seg.inference.segment import segment_volume
from salt_seg.model.predictor import Predictor
from salt_seg.prompts import Prompt
from salt_seg_apps.viewer import actions
from salt_seg_apps.viewer import handlers as h
from salt_seg_apps.viewer.engine import ModelRegistry
from salt_seg_apps.viewer.uploads import UploadPolicy
from tests.apps.conftest import (
    SHAPE,
    ct_volume,
    decode_index,
    index_volume,
    las_affine,
    oracle_loaded,
    random_tiny_loaded,
    ras_affine,
    write_dicom_series,
    write_nifti,
)
from tests.data.conftest import oblique_affine
from tests.inference.conftest import permuted_affine

POLICY = UploadPolicy()


def select(x: float, y: float) -> gr.SelectData:
    return gr.SelectData(None, {"index": [int(x), int(y)], "value": None})


def display_xy(session, x: int, y: int) -> tuple[int, int]:
    """The integer display pixel (what Gradio reports) at the centre of slice pixel ``(x, y)``."""
    px, py = session.geometry().to_display(x, y)
    return int(px), int(py)


def opened(make_session, path: Path, **kwargs):
    s = make_session(**kwargs)
    out = h.on_upload(s, [str(path)], POLICY)
    assert out["status"].startswith("opened"), out["status"]
    return s


def ras_blob() -> np.ndarray:
    """The CT blob on the RAS grid of the LAS file (i flipped)."""
    _, blob = ct_volume()
    return blob[::-1]


# --- clicks -> voxels ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_click_hits_the_voxel_under_the_cursor_on_an_anisotropic_las_volume(make_session, tmp_path, axis):
    path = write_nifti(tmp_path / "index.nii.gz", index_volume(), las_affine(spacing=(0.9, 1.1, 2.0)))
    s = opened(make_session, path)
    h.on_axis(s, {0: "Sagittal", 1: "Coronal", 2: "Axial"}[axis])
    h.on_tool(s, "inspect")
    ras = s.ras
    geo = s.geometry()
    u, v = (d for d in range(3) if d != axis)
    sp = ras.spacing
    # aspect follows the millimetres: drawn pixels per mm are equal across and down
    assert geo.width / (geo.cols * sp[u]) == pytest.approx(geo.height / (geo.rows * sp[v]), rel=0.02)
    ppmm_x, ppmm_y = geo.width / (geo.cols * sp[u]), geo.height / (geo.rows * sp[v])
    centres = ras.voxel_to_world(np.argwhere(np.ones(ras.shape, bool)))
    hi_u, hi_v = centres[:, u].max() + sp[u] / 2, centres[:, v].max() + sp[v] / 2
    for px, py in [
        (0, 0),
        (geo.width - 1, geo.height - 1),
        (geo.width // 3, geo.height // 2),
        (7, geo.height - 3),
    ]:
        out = h.on_select(s, select(px + geo.margin, py + geo.margin))  # slice pixels start inside the margin
        m = re.search(r"voxel \[(\d+), (\d+), (\d+)\].*value ([\d.e+]+)", out["cursor"])
        assert m, out["cursor"]
        shown = tuple(int(g) for g in m.groups()[:3])
        assert shown == decode_index(
            float(m.group(4))
        )  # the file voxel shown is the one whose value is shown
        world = load_volume(path).voxel_to_world(np.array(shown))[0]
        # radiological layout: the left edge is the patient's right (or anterior, sagittal), the top is A / S
        assert abs(world[u] - (hi_u - (px + 0.5) / ppmm_x)) <= sp[u] / 2 + 1e-6
        assert abs(world[v] - (hi_v - (py + 0.5) / ppmm_y)) <= sp[v] / 2 + 1e-6


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_brush_writes_the_clicked_voxel_into_the_exported_source_grid(make_session, tmp_path, axis):
    path = write_nifti(tmp_path / "index.nii.gz", index_volume(), las_affine())
    s = opened(make_session, path)
    s.set_axis(axis)
    s.set_slice(5)
    h.on_tool(s, "brush")
    h.on_brush(s, 0)
    px, py = s.geometry().width * 2 // 3, s.geometry().height // 4
    out = h.on_select(s, select(px, py))
    value = float(re.search(r"value ([\d.e+]+)", out["cursor"]).group(1))
    files = actions.export(s)
    img = nib.load(str(files[0]))
    data = np.asarray(img.dataobj)
    assert np.argwhere(data).tolist() == [list(decode_index(value))]
    assert data[decode_index(value)] == 1


def test_edge_letters_follow_the_radiological_convention(make_session, ct_nifti):
    from salt_seg_apps.viewer.render import edge_letters

    s = opened(make_session, ct_nifti)
    assert s.axcodes == "RAS"
    assert edge_letters(2, s.axcodes) == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    assert edge_letters(1, s.axcodes) == {"left": "R", "right": "L", "top": "S", "bottom": "I"}
    assert edge_letters(0, s.axcodes) == {"left": "A", "right": "P", "top": "S", "bottom": "I"}


# --- prompts -------------------------------------------------------------------------------------------------------
def test_box_from_two_clicks_segments_inside_the_box(make_session, ct_nifti):
    s = opened(make_session, ct_nifti)
    s.set_slice(10)
    h.on_tool(s, "box")
    blob = extract_slice(ras_blob(), 2, 10)
    ys, xs = np.nonzero(blob)
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    xm = (x0 + x1) // 2  # a box over the blob's left half
    first = h.on_select(s, select(*display_xy(s, xm, y1)))  # bottom-right corner first: order does not matter
    assert "first corner" in first["status"]
    assert not s.labels.any()
    h.on_select(s, select(*display_xy(s, x0, y0)))
    prompt = s.prompts.get(2, 10, 1)
    assert prompt.box == (float(x0), float(y0), float(xm), float(y1))
    assert prompt.points == []
    expected = blob.copy()
    expected[:, xm + 1 :] = False
    assert np.array_equal(s.label_slice() == 1, expected)
    assert s.prompts.corner is None


def test_points_accumulate_and_negative_points_are_kept(make_session, ct_nifti):
    s = opened(make_session, ct_nifti)
    s.set_slice(10)
    blob = extract_slice(ras_blob(), 2, 10)
    ys, xs = np.nonzero(blob)
    h.on_select(s, select(*display_xy(s, int(xs.mean()), int(ys.mean()))))
    assert np.array_equal(s.label_slice() == 1, blob)
    h.on_tool(s, "negative point")
    h.on_select(s, select(*display_xy(s, 2, 2)))
    p = s.prompts.get(2, 10, 1)
    assert p.point_labels == [1, 0]
    assert p.points[1] == (2.0, 2.0)
    assert np.array_equal(s.label_slice() == 1, blob)


def test_undo_takes_back_the_last_action_on_any_slice_and_shows_it(make_session, ct_nifti):
    s = opened(make_session, ct_nifti)
    blob = ras_blob()
    centre = {}
    for k in (9, 11):
        ys, xs = np.nonzero(extract_slice(blob, 2, k))
        centre[k] = (int(xs.mean()), int(ys.mean()))
    s.set_slice(9)
    h.on_select(s, select(*display_xy(s, *centre[9])))
    after_one = s.label_slice()
    h.on_tool(s, "brush")
    h.on_brush(s, 2)
    h.on_select(s, select(*display_xy(s, 3, 3)))
    s.set_slice(11)
    h.on_tool(s, "positive point")
    h.on_select(s, select(*display_xy(s, *centre[11])))
    slice11 = s.label_slice()
    s.set_slice(9)
    # the last action was the point on slice 11: undo takes it back and shows slice 11
    out = h.on_undo(s)
    assert out["status"] == "undone: point (axial slice 11) · 2 more step(s) to undo"
    assert s.slice_index == 11 and out["slice"]["value"] == 11
    assert not s.label_slice().any() and s.prompts.on_slice(2, 11) == {}
    assert np.array_equal(out["image"], s.render())  # the picture sent is the undone state
    assert h.on_undo(s)["status"] == "undone: brush (axial slice 9) · 1 more step(s) to undo"
    assert s.slice_index == 9 and np.array_equal(s.label_slice(), after_one)
    assert h.on_undo(s)["status"] == "undone: point (axial slice 9) · 0 more step(s) to undo"
    assert not s.labels.any() and s.prompts.all() == []
    assert h.on_undo(s)["status"] == "nothing to undo"
    s.set_slice(11)
    h.on_select(s, select(*display_xy(s, *centre[11])))
    assert np.array_equal(s.label_slice(), slice11)
    h.on_clear(s)
    assert not s.label_slice().any() and s.prompts.on_slice(2, 11) == {}
    h.on_undo(s)
    assert np.array_equal(s.label_slice(), slice11)
    assert len(s.prompts.on_slice(2, 11)[1].points) == 1


def test_several_labels_do_not_overwrite_each_other(make_session, ct_nifti):
    s = opened(make_session, ct_nifti)
    s.set_slice(10)
    h.on_tool(s, "brush")
    h.on_brush(s, 45)
    h.on_select(s, select(*display_xy(s, 32, 24)))  # label 1 everywhere on the slice
    assert (s.label_slice() == 1).all()
    out = h.on_add_label(s, "  right   kidney ")
    assert s.label_set.names[2] == "right kidney" and s.label_set.active == 2
    assert out["labels"]["value"] == 2
    h.on_tool(s, "positive point")
    blob = extract_slice(ras_blob(), 2, 10)
    ys, xs = np.nonzero(blob)
    h.on_select(s, select(*display_xy(s, int(xs.mean()), int(ys.mean()))))
    assert not (s.label_slice() == 2).any()  # the model's mask never overwrites another label
    h.on_tool(s, "eraser")
    h.on_select(s, select(*display_xy(s, int(xs.mean()), int(ys.mean()))))
    h.on_tool(s, "positive point")
    h.on_select(s, select(*display_xy(s, int(xs.mean()), int(ys.mean()))))
    lab = s.label_slice()
    assert (lab == 2).sum() > 0 and ((lab == 2) <= blob).all()
    img = s.render()
    colours = s.label_set.colours()
    assert colours[1] != colours[2]
    geo = s.geometry()
    assert img.shape == (geo.height + 2 * geo.margin, geo.width + 2 * geo.margin, 3)


# --- propagation, automatic segmentation ------------------------------------------------------------------------
def test_propagation_equals_the_library_and_covers_the_structure(make_session, ct_nifti):
    s = opened(make_session, ct_nifti)
    k = 10
    s.set_slice(k)
    blob = ras_blob()
    ys, xs = np.nonzero(extract_slice(blob, 2, k))
    h.on_select(s, select(*display_xy(s, int(xs.mean()), int(ys.mean()))))
    seen: list[float] = []
    out = h.on_propagate(s, lambda f, d: seen.append(f))
    assert out["status"].startswith("propagated blob slices")
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)
    # the library on its own, from the same seed
    loaded = oracle_loaded()
    prepared = prepare_volume(load_volume(ct_nifti), loaded.record)
    seed = Prompt(box=box_from_mask(extract_slice(blob, 2, k)), class_id=1, slice_index=k, axis=2)
    backend = PredictorBackend(Predictor(loaded.model, loaded.record), prepared)
    (res,) = propagate_many(backend, [seed], s.settings.propagation)
    kept = res.slices
    assert len(kept) >= 7 and k in kept
    for i in range(SHAPE[2]):
        lab = extract_slice(s.labels, 2, i)
        if i == k:
            continue
        expected = res.mask(i) if i in kept else np.zeros_like(lab, dtype=bool)
        assert np.array_equal(lab == 1, expected), i
        if i in kept:
            assert np.array_equal(lab == 1, extract_slice(blob, 2, i)), i  # the oracle is exact
    # one undo takes back the whole propagation: only the seed slice keeps its label
    propagated = int((s.labels == 1).sum() - (extract_slice(s.labels, 2, k) == 1).sum())
    out = h.on_undo(s)
    assert out["status"] == f"undone: propagation ({propagated} voxel(s)) · 1 more step(s) to undo"
    assert np.array_equal(s.labels == 1, np.isin(np.arange(SHAPE[2]), [k])[None, None, :] & blob)


def test_automatic_segmentation_with_class_tokens(make_session, ct_nifti):
    s = opened(make_session, ct_nifti)
    s.set_slice(10)
    out = h.on_auto_slice(s)
    assert out["status"] == "automatic: blob on this slice"
    assert np.array_equal(s.label_slice() == 1, extract_slice(ras_blob(), 2, 10))
    out = h.on_auto_volume(s, lambda f, d: None)
    assert out["status"].startswith("automatic segmentation: blob")
    loaded = oracle_loaded()
    prepared = prepare_volume(load_volume(ct_nifti), loaded.record)
    expected = segment_volume(loaded.model, loaded.record, prepared, mode="auto", settings=s.settings)
    assert np.array_equal(s.labels, expected.label_map.astype(np.uint16))
    assert s.labels.sum() > 0.8 * ras_blob().sum()


def test_a_model_without_class_tokens_says_so(make_session, ct_nifti):
    s = opened(make_session, ct_nifti, registry=ModelRegistry({"tiny": random_tiny_loaded}))
    out = h.on_auto_slice(s)
    assert out["status"] == "⚠️ this model has no trained class tokens; place points or a box instead"
    assert out["image"] is not None  # the page still shows the slice


def test_a_missing_model_leaves_the_viewer_usable(make_session, ct_nifti):
    def missing():
        raise FileNotFoundError("builtin_tiny128.safetensors: the built-in base model is missing")

    s = opened(make_session, ct_nifti, registry=ModelRegistry({"built-in": missing}))
    assert s.engine is None
    out = h.on_select(s, select(100, 100))
    assert "model 'built-in' is not available" in out["status"] and "missing" in out["status"]
    h.on_tool(s, "brush")
    assert h.on_select(s, select(100, 100))["status"].startswith("brush")
    assert s.labels.sum() > 0


# --- export geometry -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["ras", "las", "oblique", "permuted"])
def test_export_has_exactly_the_source_geometry(make_session, tmp_path, kind):
    affine = {
        "ras": ras_affine(),
        "las": las_affine(),
        "oblique": oblique_affine(),
        "permuted": permuted_affine(),
    }[kind]
    shape = (20, 16, 12) if kind == "permuted" else SHAPE
    arr = index_volume(shape)
    path = write_nifti(tmp_path / f"{kind}.nii.gz", arr, affine)
    s = opened(make_session, path)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=s.ras.shape).astype(np.uint16)
    s.label_set.ensure([1, 2])
    s.replace_labels(labels)
    nii, side = actions.export(s)
    src = nib.load(str(path))
    out = nib.load(str(nii))
    assert out.shape == src.shape
    assert np.allclose(out.affine, src.affine, atol=1e-5)
    assert int(out.header["sform_code"]) == int(src.header["sform_code"])
    assert int(out.header["qform_code"]) == int(src.header["qform_code"])
    assert out.get_data_dtype() == np.uint8
    data = np.asarray(out.dataobj)
    vol = load_volume(path)
    # the same voxels the library maps back (PreparedVolume.to_source on the equal grid)
    prepared = prepare_volume(vol, s.engine.record)
    assert np.array_equal(data, prepared.to_source(labels))
    # and voxel by voxel: the label at a source voxel is the one drawn at that voxel's RAS position
    ras = vol.to_ras()
    for ijk in [(0, 0, 0), (3, 5, 7), tuple(n - 1 for n in shape)]:
        world = vol.voxel_to_world(np.array(ijk))
        r = tuple(np.round(ras.world_to_voxel(world)[0]).astype(int))
        assert data[ijk] == labels[r]
    sidecar = json.loads(side.read_text())
    assert sidecar["labels"] == {"0": "background", "1": "blob", "2": "label 2"}
    ml = sidecar["summary"]["structures"]["2"]["volume_ml"]
    assert ml == pytest.approx((labels == 2).sum() * abs(np.linalg.det(affine[:3, :3])) / 1000, rel=1e-3)


def test_export_of_a_dicom_series_uses_its_geometry(make_session, tmp_path):
    frames = np.random.default_rng(1).integers(0, 2000, size=(6, 12, 10)).astype(np.int16)
    files = [str(p) for p in write_dicom_series(tmp_path / "series", frames)]
    folder = tmp_path / "series"
    s = make_session()
    out = h.on_upload(s, files, POLICY)
    assert out["status"].startswith("opened series-"), out["status"]
    assert s.modality == "CT" and s.preset == "soft_tissue" and (s.level, s.width) == (40.0, 400.0)
    s.replace_labels(np.ones(s.ras.shape, np.uint16))
    nii, _ = actions.export(s)
    vol = load_volume(folder)
    out_img = nib.load(str(nii))
    assert out_img.shape == vol.shape
    assert np.allclose(out_img.affine, vol.affine, atol=1e-4)
    h.on_tool(s, "inspect")
    m0 = s.geometry().margin
    cur = h.on_select(s, select(m0, m0))["cursor"]
    m = re.search(r"voxel \[(\d+), (\d+), (\d+)\].*value (-?[\d.]+) HU", cur)
    i, j, k = (int(g) for g in m.groups()[:3])
    assert float(m.group(4)) == pytest.approx(float(vol.array[0, i, j, k]))


# --- files -------------------------------------------------------------------------------------------------------
def test_load_label_map_and_volumes_in_ml(make_session, tmp_path, ct_nifti):
    _, blob = ct_volume()
    lab_path = write_nifti(tmp_path / "gt.nii.gz", (blob * 3).astype(np.uint8), las_affine())
    s = opened(make_session, ct_nifti)
    out = h.on_load_labels(s, str(lab_path), POLICY)
    assert out["status"].startswith("loaded label map gt.nii.gz: labels 3 label 3 (")
    assert 3 in s.label_set.names
    assert np.array_equal(s.labels == 3, ras_blob())
    stats = s.volumes()
    assert stats["3"]["voxels"] == int(blob.sum())
    assert stats["3"]["volume_ml"] == pytest.approx(blob.sum() * 0.9 * 1.1 * 2.0 / 1000, rel=1e-3)
    assert "<td>3</td>" in out["volumes"] and f"<td class=num>{int(blob.sum())}</td>" in out["volumes"]
    bad = write_nifti(tmp_path / "bad.nii.gz", np.zeros((5, 5, 5), np.uint8), las_affine())
    out = h.on_load_labels(s, str(bad), POLICY)
    assert out["status"].startswith("⚠️ bad.nii.gz:") and "shape" in out["status"]
    assert np.array_equal(s.labels == 3, ras_blob())  # unchanged


def test_prompt_file_round_trip(make_session, tmp_path, ct_nifti):
    s = opened(make_session, ct_nifti)
    blob = ras_blob()
    s.set_slice(10)
    ys, xs = np.nonzero(extract_slice(blob, 2, 10))
    h.on_select(s, select(*display_xy(s, int(xs.mean()), int(ys.mean()))))
    src_voxel = re.search(r"voxel \[(\d+), (\d+), (\d+)\]", s.cursor).groups()
    h.on_axis(s, "Coronal")
    s.set_slice(22)
    h.on_tool(s, "box")
    cb = extract_slice(blob, 1, 22)
    ys, xs = np.nonzero(cb)
    h.on_select(s, select(*display_xy(s, xs.min(), ys.min())))
    h.on_select(s, select(*display_xy(s, xs.max(), ys.max())))
    saved = h.on_save_prompts(s)
    path = Path(saved["download"][0])
    doc = json.loads(path.read_text())
    assert doc["coordinates"] == "voxel" and doc["image"] == "ct_las"
    axial = next(p for p in doc["prompts"] if p["axis"] == 2)
    # source voxel coordinates: x, y along the file's i, j; the click's file voxel
    assert [int(v) for v in src_voxel] == [*[int(round(c)) for c in axial["points"][0]], axial["slice_index"]]
    coronal = next(p for p in doc["prompts"] if p["axis"] == 1)
    assert coronal["slice_index"] == 22 and "box" in coronal
    t = make_session()
    h.on_upload(t, [str(ct_nifti)], POLICY)
    out = h.on_load_prompts(t, str(path), POLICY)
    assert out["status"] == "loaded 2 prompt(s) from ct_las_prompts.json"
    assert np.array_equal(t.labels, s.labels)
    assert [p.to_dict() for p in t.prompts.all()] == [p.to_dict() for p in s.prompts.all()]


# --- uploads ----------------------------------------------------------------------------------------------------------
def test_bad_uploads_show_a_readable_error_and_the_viewer_keeps_working(make_session, tmp_path, ct_nifti):
    s = make_session()
    good = ct_nifti.read_bytes()
    trunc = tmp_path / "truncated.nii.gz"
    trunc.write_bytes(good[: len(good) // 2])
    out = h.on_upload(s, [str(trunc)], POLICY)
    assert out["status"].startswith("⚠️ truncated.nii.gz: ")
    assert str(tmp_path) not in out["status"]  # the page names the file, not the server folder
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    assert h.on_upload(s, [str(txt)], POLICY)["status"].startswith("⚠️ notes.txt: unsupported file type")
    import zipfile

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../outside.dcm", b"x")
    assert "unsafe member path" in h.on_upload(s, [str(evil)], POLICY)["status"]
    assert not s.has_volume
    assert h.on_upload(s, [str(ct_nifti)], POLICY)["status"] == "opened ct_las"


def test_upload_limits_and_paths_outside_the_upload_folder(make_session, tmp_path, ct_nifti):
    s = make_session()
    small = UploadPolicy(max_bytes=1000)
    out = h.on_upload(s, [str(ct_nifti)], small)
    assert re.match(r"⚠️ upload of 0\.\d MB exceeds the limit of 0 MB", out["status"]), out["status"]
    rooted = UploadPolicy(roots=[tmp_path / "uploads"])
    out = h.on_upload(s, [str(ct_nifti)], rooted)
    assert (
        out["status"] == "⚠️ ct_las.nii.gz: not an uploaded file; the viewer reads only files uploaded to it"
    )
    out = h.on_load_labels(s, "/etc/hostname", rooted)
    assert "not an uploaded file" in out["status"]


def test_a_zip_with_two_series_asks_which_one(make_session, tmp_path):
    import zipfile

    a = np.full((4, 8, 8), 100, np.int16)
    b = np.full((5, 10, 6), 500, np.int16)
    write_dicom_series(tmp_path / "z" / "a", a, series_uid="1.2.3.1", series_number=1)
    write_dicom_series(tmp_path / "z" / "b", b, series_uid="1.2.3.2", series_number=2)
    zpath = tmp_path / "study.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in sorted((tmp_path / "z").rglob("*.dcm")):
            zf.write(f, f.relative_to(tmp_path / "z"))
    s = make_session()
    out = h.on_upload(s, [str(zpath)], POLICY)
    assert out["series"]["visible"] is True
    assert [c[1] for c in out["series"]["choices"]] == [0, 1]
    assert "2 series" in out["status"] and not s.has_volume
    assert "CT, 5 file(s), 10x6" in out["series"]["choices"][1][0]
    out = h.on_open_series(s, 1, POLICY)
    assert out["status"].startswith("opened series-") and out["series"]["visible"] is False
    assert sorted(s.volume.shape) == [5, 6, 10]
    assert np.allclose(s.volume.array, 500 - 1024)  # stored 500, intercept -1024: HU


def test_window_presets_and_auto_window(make_session, tmp_path, ct_nifti):
    s = opened(make_session, ct_nifti)
    assert s.modality == "CT" and (s.level, s.width) == (40.0, 400.0)
    out = h.on_preset(s, "lung")
    assert (s.level, s.width) == (-600.0, 1500.0) and out["level"]["value"] == -600.0
    h.on_window(s, 100, 50)
    assert (s.level, s.width, s.preset) == (100.0, 50.0, "custom")
    grey = s.render()
    assert grey[..., 0].max() == 255  # the blob (300 HU) is above the window
    mr = write_nifti(
        tmp_path / "mr.nii.gz", np.linspace(0, 800, 20 * 20 * 10).reshape(20, 20, 10), ras_affine()
    )
    t = opened(make_session, mr)
    assert t.modality == "MR" and t.preset == "auto"
    # 0.5-99.5 percentiles of 0..800 (from a subsample): level ~400, width ~792
    assert t.level == pytest.approx(400, abs=40) and t.width == pytest.approx(792, abs=40)
    assert "⚠️ unknown window preset 'nope'" in h.on_preset(t, "nope")["status"]


# --- caching -------------------------------------------------------------------------------------------------------
def test_neighbouring_slices_are_embedded_in_the_background(make_session, ct_nifti):
    s = opened(make_session, ct_nifti, radius=2)
    engine = s.engine
    assert engine.prefetcher.wait_idle(30)
    assert all(engine.is_cached(2, i) for i in (8, 9, 10, 11, 12))
    assert not engine.is_cached(2, 13)
    computed = engine.prefetcher.computed
    blob = extract_slice(ras_blob(), 2, 11)
    ys, xs = np.nonzero(blob)
    s.set_slice(11)
    h.on_select(s, select(*display_xy(s, int(xs.mean()), int(ys.mean()))))
    assert engine.prefetcher.wait_idle(30)
    assert engine.is_cached(2, 13) and engine.prefetcher.computed == computed + 1  # only slice 13 was new
    import time

    s.set_slice(12)  # every wanted slice is cached already: the prefetcher goes idle at once
    t0 = time.monotonic()
    assert engine.prefetcher.wait_idle(10) and time.monotonic() - t0 < 2.0
    assert engine.prefetcher.computed == computed + 2  # slice 14


def test_voxel_to_display_round_trip_matches_the_library(make_session, ct_nifti):
    s = opened(make_session, ct_nifti)
    for axis in (0, 1, 2):
        s.set_axis(axis)
        for ijk in [(0, 0, 0), (63, 47, 19), (30, 22, 10)]:
            index, x, y = voxel_to_slice(s.ras.shape, axis, ijk)
            s.set_slice(index)
            assert s.voxel_at(*s.geometry().to_slice(*display_xy(s, x, y))) == ijk


def test_volume_counts_stay_equal_to_the_library_summary(make_session, ct_nifti):
    from salt_seg.inference.summary import structure_stats

    s = opened(make_session, ct_nifti)
    h.on_tool(s, "brush")
    for k, r, label in [(10, 5, 1), (11, 3, 1), (10, 2, 2), (9, 8, 2)]:
        s.set_slice(k)
        if label not in s.label_set.names:
            h.on_add_label(s, "other")
        h.on_label(s, label)
        h.on_brush(s, r)
        h.on_select(s, select(*display_xy(s, 30, 20)))
    h.on_tool(s, "eraser")
    h.on_select(s, select(*display_xy(s, 31, 21)))
    h.on_undo(s)
    h.on_auto_slice(s)
    expected = structure_stats(s.labels, s.ras.geometry, s.label_set.names)
    assert s.volumes() == expected
    assert expected["1"]["voxels"] > 0 and expected["2"]["voxels"] > 0


def test_messages_name_the_users_files_never_server_paths(make_session, tmp_path):
    import zipfile

    s = make_session()
    notes = tmp_path / "notes.zip"
    with zipfile.ZipFile(notes, "w") as zf:
        zf.writestr("a.txt", "x")
        zf.writestr("b.txt", "y")
    assert (
        h.on_upload(s, [str(notes)], POLICY)["status"] == "⚠️ notes.zip: no DICOM files found in this folder"
    )
    (tmp_path / "a.dcm").write_bytes(b"junk")
    (tmp_path / "b.dcm").write_bytes(b"junk")
    out = h.on_upload(s, [str(tmp_path / "a.dcm"), str(tmp_path / "b.dcm")], POLICY)
    # the reader names the broken file (the user's name, not the upload folder's path)
    assert out["status"] == "⚠️ a.dcm: truncated or corrupt DICOM file (InvalidDicomError)"
    gradio_path = "/tmp/gradio/3bd74287/ct scan.nii.gz"
    assert h.user_facing(f"cannot read {gradio_path}: bad header", "ct scan.nii.gz") == (
        "cannot read ct scan.nii.gz: bad header"
    )
    assert (
        h.user_facing(f"'{s.workdir}/upload-9' holds no image", "study.zip") == "'study.zip' holds no image"
    )
    assert h.user_facing("spacing 0.9/1.1 mm, W/L 400/40", "x") == "spacing 0.9/1.1 mm, W/L 400/40"
    assert (
        h.error_text(ValueError(f"{s.workdir}/incoming-0/0/00003_slice.dcm: bad"), "3 files")
        == "slice.dcm: bad"
    )
