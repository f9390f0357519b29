"""``salt-seg predict`` end to end: geometry through the CLI, prompt files, batches with a corrupt case
(issue 7, acceptance 3), overwrite refusal, probability maps, torchrun sharding."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from salt_seg.cli import main
from salt_seg.inference import LoadedModel
from salt_seg.preprocessing import Preprocessing
from salt_seg.prompts import Prompt, save_prompts
from tests.data.conftest import write_dicom_series, write_nifti
from tests.inference.conftest import AFFINES, OracleModel, S

QUIET = ["--no-progress", "--device", "cpu", "--threads", "1"]


@pytest.fixture
def oracle_cli(monkeypatch: pytest.MonkeyPatch):
    """``salt-seg predict`` with the oracle model in place of a trained adapter (exact, so geometry shows)."""
    record = Preprocessing(intensity="minmax", input_scaling="medsam", image_size=S, classes={1: "organ"})

    def fake_load(model_path, variant=None, checkpoint=None, device="cpu", **kwargs):
        return LoadedModel(OracleModel(small=1), record, {1: "organ"}, {"adapter_path": "oracle"})

    monkeypatch.setattr("salt_seg.inference.load_inference_model", fake_load)
    return record


def cuboid(shape, lo, hi) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
    return m


def write_case(folder: Path, kind: str, obj: np.ndarray) -> tuple[Path, np.ndarray]:
    """Write ``obj`` (bright) as a NIfTI or DICOM case; returns its path and the source-grid affine."""
    if kind.startswith("dicom"):
        frames = np.where(np.transpose(obj, (2, 1, 0)), 1000, 100).astype(np.int16)  # k x rows x cols
        t = np.radians(8.0)
        orientation = (np.cos(t), np.sin(t), 0.0, -np.sin(t), np.cos(t), 0.0)  # slightly oblique axial
        write_dicom_series(folder / "series", frames, pixel_spacing=(0.8, 0.7), orientation=orientation)
        path = folder / "series"
        if kind == "dicom-zip":
            zpath = folder / "series.zip"
            with zipfile.ZipFile(zpath, "w") as z:
                for f in sorted(path.iterdir()):
                    z.write(f, f"dcm/{f.name}")
            path = zpath
        from salt_seg.data import load_volume

        return path, load_volume(path).affine
    path = write_nifti(folder / f"{kind}.nii.gz", np.where(obj, 0.9, 0.1).astype(np.float32), AFFINES[kind])
    return path, AFFINES[kind]


@pytest.mark.parametrize("kind", ["las", "oblique", "dicom", "dicom-zip"])
@pytest.mark.parametrize("coordinates", ["voxel", "world"])
def test_prompt_file_box_lands_exactly_on_the_object(
    tmp_path: Path, oracle_cli, kind: str, coordinates: str
) -> None:
    shape = (S, 48, 10)
    obj = cuboid(shape, (10, 6, 2), (30, 20, 8))
    path, affine = write_case(tmp_path, kind, obj)
    prompts = [
        Prompt(box=(12, 8, 27, 17), slice_index=4, axis=2),
        Prompt(box=(8, 4, 40, 30), slice_index=6, axis=2),
    ]
    save_prompts(tmp_path / "p.json", prompts, coordinates=coordinates, affine=affine)
    out = tmp_path / "out"
    rc = main(
        [
            "predict",
            "--model",
            "x",
            "--input",
            str(path),
            "--output",
            str(out),
            "--prompts",
            str(tmp_path / "p.json"),
            *QUIET,
        ]
    )
    assert rc == 0
    name = "series" if kind.startswith("dicom") else kind
    img = nib.load(str(out / f"{name}.nii.gz"))
    expected = np.zeros(shape, np.uint8)
    expected[12:28, 8:18, 4] = 1  # the bright voxels inside the first box
    expected[10:30, 6:20, 6] = 1  # the second box holds the whole cross-section
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), expected)
    np.testing.assert_allclose(img.affine, affine, atol=1e-4)
    doc = json.loads((out / f"{name}.json").read_text())
    vox = abs(np.linalg.det(affine[:3, :3]))
    assert doc["summary"]["structures"]["1"]["voxels"] == int(expected.sum()) == 160 + 280
    assert doc["summary"]["structures"]["1"]["volume_ml"] == pytest.approx(440 * vox / 1000, abs=1e-4)
    assert doc["summary"]["structures"]["1"]["slices"] == [4, 6]
    assert doc["labels"] == {"0": "background", "1": "organ"}


def test_propagate_mode_recovers_the_object_in_source_geometry(tmp_path: Path, oracle_cli) -> None:
    shape = (S, 48, 16)
    obj = cuboid(shape, (10, 6, 3), (30, 20, 12))
    path, affine = write_case(tmp_path, "oblique", obj)
    save_prompts(
        tmp_path / "p.json",
        [Prompt(box=(10, 6, 29, 19), slice_index=7, axis=2)],
        coordinates="world",
        affine=affine,
    )
    out = tmp_path / "out"
    rc = main(
        [
            "predict",
            "--model",
            "x",
            "--input",
            str(path),
            "--output",
            str(out),
            "--prompts",
            str(tmp_path / "p.json"),
            "--mode",
            "propagate",
            "--probabilities",
            *QUIET,
        ]
    )
    assert rc == 0
    got = np.asanyarray(nib.load(str(out / "oblique.nii.gz")).dataobj)
    np.testing.assert_array_equal(got, obj.astype(np.uint8))
    probs = nib.load(str(out / "oblique_probabilities.nii.gz"))
    assert probs.shape == (*shape, 1)
    np.testing.assert_allclose(probs.get_fdata()[..., 0], np.where(obj, 1.0, 0.0), atol=1e-3)
    summary = json.loads((out / "oblique.json").read_text())["summary"]
    assert summary["propagation"] == [
        {
            "class_id": 1,
            "seed_slice": 7,
            "slices": list(range(3, 12)),
            "stopped": {"up": "min_area", "down": "min_area"},
        }
    ]  # past each end the mask is empty


def test_real_model_auto_mode_writes_every_output(tmp_path: Path, tiny_run: Path) -> None:
    src = write_nifti(
        tmp_path / "in" / "case01.nii.gz", np.random.default_rng(0).normal(size=(40, 30, 6)), AFFINES["las"]
    )
    out = tmp_path / "out"
    rc = main(
        [
            "predict",
            "--model",
            str(tiny_run),
            "--input",
            str(src),
            "--output",
            str(out),
            "--batch-size",
            "4",
            "--score-threshold",
            "0",
            *QUIET,
        ]
    )
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "case01.json",
        "case01.nii.gz",
        "labels.ctbl",
        "labels_itksnap.txt",
        "predict_summary.json",
    ]
    img = nib.load(str(out / "case01.nii.gz"))
    assert img.shape == (40, 30, 6) and img.get_data_dtype() == np.uint8
    np.testing.assert_allclose(img.affine, AFFINES["las"], atol=1e-5)
    data = np.asanyarray(img.dataobj)
    assert set(np.unique(data).tolist()) <= {0, 1, 2}
    doc = json.loads((out / "case01.json").read_text())
    vox = 0.9 * 1.1 * 2.0
    for cid in ("1", "2"):
        st = doc["summary"]["structures"][cid]
        assert st["voxels"] == int((data == int(cid)).sum())
        assert st["volume_ml"] == pytest.approx(st["voxels"] * vox / 1000, abs=1e-4)
    assert doc["labels"] == {"0": "background", "1": "liver", "2": "spleen tumour"}
    assert doc["summary"]["geometry"]["orientation"] == "LAS"
    summary = json.loads((out / "predict_summary.json").read_text())
    assert summary["n_ok"] == 1 and summary["n_failed"] == 0 and summary["mode"] == "auto"
    assert "spleen_tumour" in (out / "labels.ctbl").read_text()


def test_batch_with_a_corrupt_case_finishes_the_others(tmp_path: Path, tiny_run: Path, capsys) -> None:
    folder = tmp_path / "cases"
    rng = np.random.default_rng(1)
    for name in ("a", "c"):
        write_nifti(folder / f"{name}.nii.gz", rng.normal(size=(32, 24, 4)), AFFINES["ras"])
    good = (folder / "a.nii.gz").read_bytes()
    (folder / "b.nii.gz").write_bytes(good[: len(good) // 2])  # truncated
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    rc = main(["predict", "--model", str(tiny_run), "--input", str(folder), "--output", str(out), *QUIET])
    assert rc == 1
    summary = json.loads((out / "predict_summary.json").read_text())
    assert [c["case"] for c in summary["ok"]] == ["a", "c"]
    assert [c["case"] for c in summary["failed"]] == ["b"]
    assert "b.nii.gz" in summary["failed"][0]["error"]
    assert summary["n_cases"] == 3 and summary["n_failed"] == 1
    assert (out / "a.nii.gz").is_file() and (out / "c.nii.gz").is_file() and not (out / "b.nii.gz").exists()
    printed = capsys.readouterr().out
    assert "FAILED  b:" in printed and "ok      a:" in printed and "2 ok, 1 failed" in printed
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_existing_outputs_are_not_overwritten(tmp_path: Path, tiny_run: Path, capsys) -> None:
    src = write_nifti(tmp_path / "case.nii.gz", np.zeros((16, 16, 3)), AFFINES["ras"])
    out = tmp_path / "out"
    args = ["predict", "--model", str(tiny_run), "--input", str(src), "--output", str(out), *QUIET]
    assert main(args) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(args) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert main([*args, "--overwrite"]) == 0


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--mode", "prompts"], "needs --prompts"),
        (["--mode", "auto", "--prompts", "PROMPTS"], "not auto"),
        (["--prompts", "PROMPTS"], "one prompt file for 2 cases"),
    ],
)
def test_user_errors_are_one_line(tmp_path: Path, tiny_run: Path, capsys, extra, match) -> None:
    for n in ("a", "b"):
        write_nifti(tmp_path / "in" / f"{n}.nii.gz", np.zeros((8, 8, 2)), AFFINES["ras"])
    save_prompts(tmp_path / "p.json", [Prompt(box=(1, 1, 3, 3), slice_index=0, axis=2)])
    extra = [str(tmp_path / "p.json") if e == "PROMPTS" else e for e in extra]
    rc = main(
        [
            "predict",
            "--model",
            str(tiny_run),
            "--input",
            str(tmp_path / "in"),
            "--output",
            str(tmp_path / "out"),
            *extra,
            *QUIET,
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and match in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_torchrun_shards_cases_and_rank0_writes_the_summary(tmp_path: Path, tiny_run: Path) -> None:
    folder = tmp_path / "cases"
    rng = np.random.default_rng(2)
    for name in ("a", "b", "c"):
        write_nifti(folder / f"{name}.nii.gz", rng.normal(size=(24, 20, 3)), AFFINES["las"])
    (folder / "d.nii.gz").write_bytes(b"garbage")
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SALT_SEG_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "salt_seg",
            "predict",
            "--model",
            str(tiny_run),
            "--input",
            str(folder),
            "--output",
            str(out),
            *QUIET,
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert proc.returncode != 0, proc.stderr[-2000:]  # d failed on its rank, so the job fails
    summary = json.loads((out / "predict_summary.json").read_text())
    assert summary["world_size"] == 2
    assert [c["case"] for c in summary["ok"]] == ["a", "b", "c"]
    assert [c["case"] for c in summary["failed"]] == ["d"]
    for name in ("a", "b", "c"):
        assert nib.load(str(out / f"{name}.nii.gz")).shape == (24, 20, 3)


def test_two_d_picture_case(tmp_path: Path, oracle_cli) -> None:
    """A PNG is a W x H x 1 volume: the prompt needs no slice; the label map has the picture's grid."""
    from tests.data.conftest import write_picture

    pic = np.full((40, S), 20, np.uint8)  # rows x cols
    pic[10:20, 30:50] = 230
    src = write_picture(tmp_path / "photo.png", pic)
    (tmp_path / "p.json").write_text(json.dumps({"prompts": [{"box": [25, 5, 55, 25], "class_id": 1}]}))
    out = tmp_path / "out"
    rc = main(
        [
            "predict",
            "--model",
            "x",
            "--input",
            str(src),
            "--output",
            str(out),
            "--prompts",
            str(tmp_path / "p.json"),
            *QUIET,
        ]
    )
    assert rc == 0
    got = np.asanyarray(nib.load(str(out / "photo.nii.gz")).dataobj)
    assert got.shape == (S, 40, 1)  # x = column, y = row
    np.testing.assert_array_equal(got[..., 0].T, (pic > 100).astype(np.uint8))


def test_resampling_record_still_writes_the_source_grid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With in-plane resampling (record.spacing) the label map is mapped back onto the input's own grid."""
    record = Preprocessing(
        intensity="minmax", input_scaling="medsam", image_size=S, classes={1: "organ"}, spacing=1.5
    )
    monkeypatch.setattr(
        "salt_seg.inference.load_inference_model",
        lambda *a, **k: LoadedModel(OracleModel(small=1), record, {1: "organ"}, {}),
    )
    shape = (70, 60, 5)
    obj = cuboid(shape, (20, 10, 1), (50, 40, 4))
    src = write_nifti(
        tmp_path / "fine.nii.gz", np.where(obj, 0.9, 0.1).astype(np.float32), AFFINES["oblique"]
    )
    out = tmp_path / "out"
    assert main(["predict", "--model", "x", "--input", str(src), "--output", str(out), *QUIET]) == 0
    img = nib.load(str(out / "fine.nii.gz"))
    assert img.shape == shape
    np.testing.assert_allclose(img.affine, AFFINES["oblique"], atol=1e-5)
    got = np.asanyarray(img.dataobj).astype(bool)
    dice = 2 * (got & obj).sum() / (got.sum() + obj.sum())
    assert dice > 0.95  # nearest-neighbour through a 1.5 mm grid and back


def test_builtin_base_alone_propagates_from_a_world_prompt(tmp_path: Path) -> None:
    """No adapter: `--checkpoint builtin` segments from prompts; end to end through NIfTI in LAS orientation."""
    from salt_seg.inference.calibration import middle_box_prompt, validation_volume
    from salt_seg.model.builtin import builtin_checkpoint

    try:
        builtin_checkpoint()
    except FileNotFoundError:
        pytest.skip("built-in base not yet shipped")
    image, obj = validation_volume(9004)
    src = write_nifti(tmp_path / "obj.nii.gz", image, AFFINES["las"])
    save_prompts(tmp_path / "p.json", [middle_box_prompt(obj, 2)], coordinates="world", affine=AFFINES["las"])
    out = tmp_path / "out"
    rc = main(
        [
            "predict",
            "--checkpoint",
            "builtin",
            "--input",
            str(src),
            "--output",
            str(out),
            "--prompts",
            str(tmp_path / "p.json"),
            "--mode",
            "propagate",
            *QUIET,
        ]
    )
    assert rc == 0
    got = np.asanyarray(nib.load(str(out / "obj.nii.gz")).dataobj).astype(bool)
    assert 2 * (got & obj).sum() / (got.sum() + obj.sum()) >= 0.85
    doc = json.loads((out / "obj.json").read_text())
    assert doc["labels"] == {"0": "background", "1": "object"}


def test_base_without_model_needs_prompts(tmp_path: Path, capsys) -> None:
    src = write_nifti(tmp_path / "a.nii.gz", np.zeros((8, 8, 2)), AFFINES["ras"])
    assert main(["predict", "--input", str(src), "--output", str(tmp_path / "o"), *QUIET]) == 2
    assert "give --model" in capsys.readouterr().err
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                "builtin",
                "--input",
                str(src),
                "--output",
                str(tmp_path / "o"),
                *QUIET,
            ]
        )
        == 2
    )
    assert "no class tokens" in capsys.readouterr().err


def test_mirror_flag_is_recorded_and_changes_the_probabilities(tmp_path: Path, tiny_run: Path) -> None:
    src = write_nifti(
        tmp_path / "in" / "case01.nii.gz", np.random.default_rng(0).normal(size=(40, 30, 6)), AFFINES["las"]
    )
    probs = {}
    for flag in ([], ["--mirror"]):
        out = tmp_path / ("mirror" if flag else "plain")
        args = [
            "predict",
            "--model",
            str(tiny_run),
            "--input",
            str(src),
            "--output",
            str(out),
            "--probabilities",
        ]
        assert main([*args, *flag, *QUIET]) == 0
        summary = json.loads((out / "predict_summary.json").read_text())
        assert summary["settings"]["mirror"] is bool(flag)
        probs[bool(flag)] = np.asanyarray(nib.load(str(out / "case01_probabilities.nii.gz")).dataobj)
    assert probs[True].shape == probs[False].shape
    assert float(np.abs(probs[True] - probs[False]).max()) > 1e-3  # the mirror view was averaged in


def _predict_boxes_on_slices(tmp_path: Path, path: Path, out: Path, fmt: str) -> np.ndarray:
    """``predict --format fmt`` with one box on slices 3, 4 and 6 of ``path``; the NIfTI label map it wrote."""
    save_prompts(tmp_path / "p.json", [Prompt(box=(8, 4, 40, 30), slice_index=k, axis=2) for k in (3, 4, 6)])
    args = [
        "predict",
        "--model",
        "x",
        "--input",
        str(path),
        "--out",
        str(out),
        "--prompts",
        str(tmp_path / "p.json"),
    ]
    assert main([*args, "--format", fmt, *QUIET]) == 0
    return np.asanyarray(nib.load(str(out / "series.nii.gz")).dataobj)


@pytest.mark.parametrize("kind", ["dicom", "dicom-zip"])
def test_dicom_seg_output_equals_the_nifti_label_map(tmp_path: Path, oracle_cli, kind: str) -> None:
    """``--format dicom-seg`` on a DICOM series (folder or zip): the SEG read back with highdicom is the NIfTI
    label map voxel for voxel, named as the model's classes."""
    from salt_seg.data import load_volume
    from salt_seg.data.dicom_seg import read_dicom_seg

    shape = (S, 48, 10)
    path, _ = write_case(tmp_path, kind, cuboid(shape, (10, 6, 2), (30, 20, 8)))
    out = tmp_path / "out"
    nifti = _predict_boxes_on_slices(tmp_path, path, out, "dicom-seg")
    assert nifti.sum() == 3 * 20 * 14
    seg, names = read_dicom_seg(out / "series.seg.dcm", load_volume(path))
    np.testing.assert_array_equal(seg, nifti)
    assert names == {1: "organ"}
    doc = json.loads((out / "series.json").read_text())
    assert doc["summary"]["outputs"]["dicom_seg"].endswith("series.seg.dcm")


def test_dicom_seg_output_of_a_nifti_case_is_a_one_line_failure(tmp_path: Path, oracle_cli, capsys) -> None:
    path, _ = write_case(tmp_path, "las", cuboid((S, 48, 10), (10, 6, 2), (30, 20, 8)))
    out = tmp_path / "out"
    rc = main(
        [
            "predict",
            "--model",
            "x",
            "--input",
            str(path),
            "--output",
            str(out),
            "--format",
            "dicom-seg",
            *QUIET,
        ]
    )
    assert rc == 1
    printed = capsys.readouterr().out
    assert "DICOM-SEG and RTSTRUCT output need a DICOM series as input; this case is a nifti image" in printed
    assert not list(out.glob("las*"))


def test_dicom_seg_of_the_packaged_real_ct_round_trips(tmp_path: Path, oracle_cli) -> None:
    """Issue 19's acceptance on pydicom-data's real CT series (5 slices): predict -> DICOM-SEG -> highdicom."""
    import shutil

    from pydicom.data import get_testdata_file

    from salt_seg.data import load_volume
    from salt_seg.data.dicom_seg import read_dicom_seg

    ct = tmp_path / "ct"
    shutil.copytree(get_testdata_file("dicomdirtests/98892001/CT5N"), ct)
    save_prompts(tmp_path / "p.json", [Prompt(box=(2, 2, 13, 13), slice_index=k, axis=2) for k in (1, 2, 3)])
    out = tmp_path / "out"
    args = [
        "predict",
        "--model",
        "x",
        "--input",
        str(ct),
        "--output",
        str(out),
        "--prompts",
        str(tmp_path / "p.json"),
    ]
    assert main([*args, "--format", "dicom-seg", *QUIET]) == 0
    nifti = np.asanyarray(nib.load(str(out / "ct.nii.gz")).dataobj)
    assert nifti.any() and not nifti[..., 0].any()  # prompted slices only
    seg, names = read_dicom_seg(out / "ct.seg.dcm", load_volume(ct))
    np.testing.assert_array_equal(seg, nifti)
    assert names == {1: "organ"}


def test_rtstruct_output_equals_the_nifti_label_map(tmp_path: Path, oracle_cli) -> None:
    pytest.importorskip("rt_utils")
    from salt_seg.data.rtstruct import read_rtstruct

    obj = cuboid((S, 48, 10), (10, 6, 2), (30, 20, 8))
    frames = np.where(np.transpose(obj, (2, 1, 0)), 1000, 100).astype(np.int16)  # k x rows x cols
    t = np.radians(8.0)  # square pixels (RTSTRUCT output needs them), slightly oblique, non-square image
    path = tmp_path / "series"
    orientation = (np.cos(t), np.sin(t), 0.0, -np.sin(t), np.cos(t), 0.0)
    write_dicom_series(path, frames, pixel_spacing=(0.7, 0.7), orientation=orientation)
    out = tmp_path / "out"
    nifti = _predict_boxes_on_slices(tmp_path, path, out, "rtstruct")
    from salt_seg.data import load_volume

    back, names = read_rtstruct(out / "series.rtstruct.dcm", load_volume(path))
    np.testing.assert_array_equal(back, nifti)  # axis-aligned boxes: the contours are exact
    assert names == {1: "organ"}


def test_predict_says_out_and_force_like_the_other_commands(tmp_path: Path, tiny_run: Path, capsys) -> None:
    """``--out``/``--force`` as in ``data prepare`` and ``export-onnx``; the old ``--output``/``--overwrite``
    still work for one release."""
    src = write_nifti(
        tmp_path / "in" / "c.nii.gz", np.random.default_rng(0).normal(size=(24, 20, 3)), AFFINES["ras"]
    )
    out = tmp_path / "out"
    assert main(["predict", "--model", str(tiny_run), "--input", str(src), "--out", str(out), *QUIET]) == 0
    assert main(["predict", "--model", str(tiny_run), "--input", str(src), "--out", str(out), *QUIET]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert (
        main(["predict", "--model", str(tiny_run), "--input", str(src), "--out", str(out), "--force", *QUIET])
        == 0
    )
    old = [
        "predict",
        "--model",
        str(tiny_run),
        "--input",
        str(src),
        "--output",
        str(out),
        "--overwrite",
        *QUIET,
    ]
    assert main(old) == 0
    assert (out / "c.nii.gz").is_file()
