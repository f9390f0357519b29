"""Editing in the viewer (issue 20): one undo stack for every action whatever its scope, the view drawn after the
state changes, replacing a volume that holds unsaved labels, reloading an export with its names and colours, the
label panel, brush strokes, the page's commands (wheel, panel), window values and which model answers what."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from salt_seg.data.volume import extract_slice
from salt_seg.inference.sidecars import PALETTE
from salt_seg_apps.viewer import actions
from salt_seg_apps.viewer import handlers as h
from salt_seg_apps.viewer.engine import BUILTIN_MODEL, ModelRegistry
from salt_seg_apps.viewer.state import Action, UndoStack
from salt_seg_apps.viewer.uploads import UploadPolicy
from tests.apps.conftest import SHAPE, ct_volume, las_affine, oracle_loaded, write_nifti
from tests.apps.test_handlers import display_xy, opened, ras_blob, select

POLICY = UploadPolicy()


def click_blob(s, k: int = 10) -> None:
    s.set_slice(k)
    ys, xs = np.nonzero(extract_slice(ras_blob(), 2, k))
    h.on_select(s, select(*display_xy(s, int(xs.mean()), int(ys.mean()))))


def table_voxels(html: str) -> dict[int, int]:
    """id -> voxels from the label panel's HTML."""
    return {
        int(i): int(n) for i, n in re.findall(r"<td>(\d+)</td><td>.*?</td><td class=num>(\d+)</td>", html)
    }


# --- undo -----------------------------------------------------------------------------------------------------------
def test_undo_shows_the_undone_state_at_once(make_session, ct_nifti):
    s = opened(make_session, ct_nifti)
    empty = s.render()
    click_blob(s)
    assert s.labels.any()
    out = h.on_undo(s)
    assert out["status"] == "undone: point (axial slice 10) · 0 more step(s) to undo"
    assert np.array_equal(out["image"], empty)  # the overlay is gone in the same answer
    assert table_voxels(out["volumes"]) == {1: 0}
    assert h.on_undo(s)["status"] == "nothing to undo"


def test_a_whole_volume_action_is_undone_in_one_step_and_the_table_follows(make_session, ct_nifti):
    s = opened(make_session, ct_nifti)
    click_blob(s, 5)
    after_click = s.labels.copy()
    out = h.on_auto_volume(s, lambda f, d: None)
    n = int(re.search(r"\((\d+) slice\(s\) changed\)", out["status"]).group(1))
    assert n > 5 and table_voxels(out["volumes"]) == {1: int((s.labels == 1).sum())}
    # only the changed slices are kept, along the axis that needs the fewest voxels
    act = s.undo_stack.peek()
    assert act.name == "automatic segmentation"
    changed = after_click != s.labels
    per_axis = [
        changed.any(axis=tuple(d for d in range(3) if d != a)).sum() * changed.size // SHAPE[a]
        for a in range(3)
    ]
    assert act.nbytes == min(per_axis) * 2  # uint16
    out = h.on_undo(s)
    assert (
        out["status"]
        == f"undone: automatic segmentation ({int(changed.sum())} voxel(s)) · 1 more step(s) to undo"
    )
    assert np.array_equal(s.labels, after_click)
    assert table_voxels(out["volumes"]) == {1: int((after_click == 1).sum())}
    nii, _ = actions.export(s)  # what the table says is what the export holds
    assert int((np.asarray(nib.load(str(nii)).dataobj) == 1).sum()) == int((after_click == 1).sum())


def test_loading_a_label_map_is_undone_in_one_step_with_its_names(make_session, tmp_path, ct_nifti):
    _, blob = ct_volume()
    lab = write_nifti(tmp_path / "gt.nii.gz", (blob * 4).astype(np.uint8), las_affine())
    side = tmp_path / "gt.json"
    side.write_text(json.dumps({"labels": {"0": "background", "4": "L ventricle"}}))
    s = opened(make_session, ct_nifti)
    click_blob(s)
    before, names = s.labels.copy(), dict(s.label_set.names)
    h.on_load_labels(s, [str(lab), str(side)], UploadPolicy(roots=[]))
    assert s.label_set.names[4] == "L ventricle"
    out = h.on_undo(s)
    assert out["status"].startswith("undone: load gt.nii.gz (")
    assert np.array_equal(s.labels, before) and s.label_set.names == names
    assert [label for _, label in out["labels"]["choices"]] == sorted(names)


def test_a_failing_action_leaves_nothing_half_written(make_session, ct_nifti):
    s = opened(make_session, ct_nifti)
    click_blob(s)
    before, depth = s.labels.copy(), len(s.undo_stack)
    with pytest.raises(RuntimeError, match="boom"), s.action("two slices"):
        s.edit_slice(np.ones_like(s.label_slice()), (2, 3))
        s.edit_slice(np.ones_like(s.label_slice()), (2, 4))
        raise RuntimeError("boom")
    assert np.array_equal(s.labels, before) and len(s.undo_stack) == depth
    assert s.volumes()["1"]["voxels"] == int((before == 1).sum())  # the counts were put back too


def test_undo_restores_overlapping_slices_of_different_axes_exactly(make_session, ct_nifti):
    s = opened(make_session, ct_nifti)
    rng = np.random.default_rng(0)
    before = s.labels.copy()
    with s.action("mixed"):
        s.edit_slice(rng.integers(0, 3, (48, 64)), (2, 5))
        s.edit_slice(rng.integers(0, 3, (20, 64)), (1, 7))  # crosses axial slice 5
        s.edit_slice(rng.integers(0, 3, (48, 64)), (2, 5))
    assert len(s.undo_stack) == 1
    s.undo()
    assert np.array_equal(s.labels, before)


def test_the_undo_stack_keeps_within_its_memory_cap():
    stack = UndoStack(max_actions=10, max_bytes=3000)
    for i in range(4):
        stack.push(Action(f"a{i}", slices={(2, i): np.zeros(1000, np.uint8)}))
    assert len(stack) == 3 and stack.nbytes == 3000
    stack.push(Action("big", slices={(2, 9): np.zeros(5000, np.uint8)}))
    assert len(stack) == 1 and stack.peek().name == "big"  # the newest stays even when larger than the cap
    with pytest.raises(ValueError, match="max_actions must be >= 1, got 0"):
        UndoStack(max_actions=0)


# --- opening over unsaved labels ------------------------------------------------------------------------------------
def test_a_second_upload_replaces_the_first_and_asks_before_discarding_labels(
    make_session, tmp_path, ct_nifti
):
    arr, _ = ct_volume()
    other = write_nifti(tmp_path / "other.nii.gz", arr[:, :, :12], las_affine())
    s = opened(make_session, ct_nifti)
    out = h.on_upload(s, [str(ct_nifti)], POLICY)
    assert out["upload"] is None  # the file box is emptied: the next upload is sent alone
    assert out["status"] == "opened ct_las"  # no labels yet: no question
    click_blob(s)
    labels = s.labels.copy()
    out = h.on_upload(s, [str(other)], POLICY)
    assert out["confirm"] == {"visible": True} and out["upload"] is None
    assert out["status"] == (
        f"⚠️ ct_las has {int(labels.astype(bool).sum())} labelled voxel(s) not exported: export them first, or "
        "press “Discard labels and open other.nii.gz”"
    )
    assert s.volume.name == "ct_las" and np.array_equal(s.labels, labels)  # nothing changed yet
    out = h.on_cancel_open(s)
    assert out["status"] == "kept your labels; other.nii.gz was not opened" and s.pending is None
    assert h.on_confirm_open(s, POLICY)["status"] == "nothing waits to be opened"
    h.on_upload(s, [str(other)], POLICY)
    out = h.on_confirm_open(s, POLICY)
    assert out["status"] == "opened other" and out["confirm"] == {"visible": False}
    assert s.volume.shape == (64, 48, 12) and not s.labels.any()


def test_exported_labels_do_not_ask_again(make_session, tmp_path, ct_nifti):
    s = opened(make_session, ct_nifti)
    click_blob(s)
    assert s.has_unsaved_labels
    h.on_export(s)
    assert not s.has_unsaved_labels
    assert h.on_upload(s, [str(ct_nifti)], POLICY)["status"] == "opened ct_las"


# --- export and reload ------------------------------------------------------------------------------------------------
def test_export_then_reload_keeps_names_and_colours(make_session, tmp_path, ct_nifti):
    s = opened(make_session, ct_nifti)
    h.on_rename_label(s, "blob")
    h.on_add_label(s, "L ventricle")
    h.on_tool(s, "brush")
    h.on_brush(s, 1)
    s.set_slice(3)
    h.on_select(s, select(*display_xy(s, 5, 5)))
    s.label_set.colors[2] = (10, 20, 30)  # a colour that is not the palette's
    h.on_label(s, 1)
    h.on_tool(s, "positive point")
    click_blob(s)
    nii, side = actions.export(s)
    doc = json.loads(side.read_text())
    assert doc["labels"] == {"0": "background", "1": "blob", "2": "L ventricle"}
    assert doc["colors"] == {"1": list(PALETTE[0]), "2": [10, 20, 30]}
    t = make_session()
    h.on_upload(t, [str(ct_nifti)], POLICY)
    out = h.on_load_labels(t, [str(nii), str(side)], UploadPolicy(roots=[]))
    assert out["status"] == (
        "loaded label map ct_las_labels.nii.gz (names from ct_las_labels.json): labels 1 blob, 2 L ventricle "
        f"({int(s.labels.any(axis=(0, 1)).sum())} slice(s) changed)"
    )
    assert t.label_set.names == {1: "blob", 2: "L ventricle"}
    assert t.label_set.colours() == {1: PALETTE[0], 2: (10, 20, 30)}
    assert np.array_equal(t.labels, s.labels)
    assert "L ventricle" in out["volumes"] and "rgb(10,20,30)" in out["volumes"]
    assert not t.has_unsaved_labels  # what is shown is what the file holds


def test_reloading_without_the_sidecar_or_with_two_maps_says_what_to_do(make_session, tmp_path, ct_nifti):
    s = opened(make_session, ct_nifti)
    click_blob(s)
    nii, side = actions.export(s)
    out = h.on_load_labels(s, [str(nii), str(nii)], UploadPolicy(roots=[]))
    assert out["status"] == (
        "⚠️ load one label map, optionally with its JSON sidecar; got 2 label map(s) and 0 JSON file(s)"
    )
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    out = h.on_load_labels(s, [str(nii), str(bad)], UploadPolicy(roots=[]))
    assert out["status"].startswith("⚠️ bad.json: not a JSON label sidecar")
    assert s.label_set.names == {1: "blob"}  # unchanged


# --- label panel, strokes, commands ------------------------------------------------------------------------------------
def test_label_panel_hide_rename_delete_and_undo_delete(make_session, ct_nifti):
    s = opened(make_session, ct_nifti)
    click_blob(s)
    shown = s.render()
    out = h.on_command(s, "toggle:1")
    assert out["status"] == "blob hidden" and 'data-cmd="toggle:1"' in out["volumes"]
    assert np.array_equal(out["image"], h.view(s)["image"]) and not np.array_equal(out["image"], shown)
    assert s.labels.any() and ">hidden</button>" in out["volumes"]  # hidden, not removed
    out = h.on_command(s, "toggle:1")
    assert out["status"] == "blob shown" and np.array_equal(out["image"], shown)
    out = h.on_rename_label(s, "  liver  ")
    assert out["status"] == "renamed blob to liver" and out["new_label"] == ""
    assert out["labels"]["choices"] == [("1: liver", 1)]
    h.on_add_label(s, "spleen")
    out = h.on_command(s, "select:1")
    assert out["status"] == "active label: liver" and out["labels"]["value"] == 1
    voxels = int((s.labels == 1).sum())
    out = h.on_delete_label(s)
    assert out["status"] == f"deleted liver ({voxels} voxel(s)); Undo brings it back"
    assert not s.labels.any() and s.label_set.names == {2: "spleen"} and s.prompts.all() == []
    h.on_undo(s)
    assert int((s.labels == 1).sum()) == voxels and s.label_set.names == {1: "liver", 2: "spleen"}
    assert len(s.prompts.all()) == 1


def test_a_brush_drag_is_one_stroke_and_one_undo(make_session, ct_nifti):
    s = opened(make_session, ct_nifti)
    s.set_slice(4)
    h.on_tool(s, "brush")
    h.on_brush(s, 1)
    pts = [display_xy(s, x, 10) for x in (5, 20, 40)]
    out = h.on_command(s, "stroke:" + ";".join(f"{x},{y}" for x, y in pts))
    drawn = s.label_slice() == 1
    # a band 3 voxels tall from x = 4 to 41 on row 10, no gaps between the sampled points
    assert drawn[10, 4:42].all() and drawn[9, 5:41].all() and drawn[11, 5:41].all()
    assert not drawn[:8].any() and not drawn[13:].any()
    src = s.source_voxel(5, 10)
    assert (
        out["status"]
        == f"brush 3-point stroke from voxel [{', '.join(map(str, src))}]: {int(drawn.sum())} voxel(s) changed"
    )
    assert (
        f"voxel [{', '.join(map(str, s.source_voxel(40, 10)))}]" in out["cursor"]
    )  # the hover line's voxels
    h.on_undo(s)
    assert not s.labels.any()
    h.on_tool(s, "inspect")
    x, y = display_xy(s, 5, 5)
    assert h.on_command(s, f"stroke:{x},{y}")["status"] == (
        "⚠️ strokes need the brush or the eraser tool, not 'inspect'"
    )
    assert h.on_command(s, "stroke:1,1")["status"] == "brush strokes must start on the image"  # the margin


def test_wheel_steps_and_unknown_commands(make_session, ct_nifti):
    s = opened(make_session, ct_nifti)
    s.set_slice(10)
    out = h.on_command(s, "step:3")
    assert s.slice_index == 13 and out["slice"]["value"] == 13
    h.on_command(s, "step:-100")
    assert s.slice_index == 0
    assert h.on_command(s, "jump:1")["status"] == "⚠️ unknown command 'jump'"


def test_window_boxes_show_rounded_values(make_session, tmp_path):
    arr = np.random.default_rng(0).normal(4234.1049, 1000.0, (20, 20, 8)).astype(np.float32)
    path = write_nifti(tmp_path / "mr.nii.gz", arr, las_affine())
    s = make_session()
    out = h.on_upload(s, [str(path)], POLICY)
    for key in ("level", "width"):
        value = out[key]["value"]
        assert value == float(f"{value:.4g}") and len(f"{value:g}") <= 6, value
        assert out[key]["step"] == 1.0
    assert out["level"]["value"] == s.level and out["width"]["value"] == s.width
    assert h.window_step(0.5) == pytest.approx(1e-4) and h.window_step(4000) == 1.0


# --- which model answers what ---------------------------------------------------------------------------------------
def tokens_only_loaded():
    """A trained run whose decoder learned class tokens only: a point gives the whole body (its token's answer)."""
    from dataclasses import replace

    from salt_seg.inference.loading import LoadedModel
    from tests.inference.conftest import OracleModel

    base = oracle_loaded()
    record = replace(base.record, prompt_mode="auto", window_level=-500.0, window_width=1000.0)
    return LoadedModel(OracleModel(level=0.25), record, {1: "body"}, {})


def test_points_go_to_the_base_decoder_when_the_run_learned_class_tokens_only(make_session, ct_nifti):
    reg = ModelRegistry({"trained: run": tokens_only_loaded, BUILTIN_MODEL: oracle_loaded})
    s = opened(make_session, ct_nifti, registry=reg)
    assert s.prompt_engine is not s.engine
    out = h.full_view(s, "")
    assert out["model_note"] == (
        f"points/boxes: {BUILTIN_MODEL} (SAM's prompt decoder) · class tokens (Auto): trained: run, 1 class(es)"
    )
    click_blob(s)
    assert np.array_equal(s.label_slice() == 1, extract_slice(ras_blob(), 2, 10))  # the blob, not the body
    alone = opened(make_session, ct_nifti, registry=ModelRegistry({"trained: run": tokens_only_loaded}))
    assert alone.prompt_engine is alone.engine
    assert h.full_view(alone, "")["model_note"].startswith(
        "⚠️ points/boxes: trained: run, whose decoder learned class tokens only"
    )
    click_blob(alone)
    assert (alone.label_slice() == 1).sum() > 3 * extract_slice(ras_blob(), 2, 10).sum()  # the whole body


def test_the_model_note_of_a_base_and_of_a_mixed_run(make_session, ct_nifti):
    s = opened(make_session, ct_nifti)
    assert h.full_view(s, "")["model_note"] == (
        "points/boxes: oracle (trained on box prompts) · class tokens (Auto): oracle, 1 class(es)"
    )
    assert Path(s.workdir).exists()
