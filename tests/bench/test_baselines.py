"""bench/nnunet_baseline.py's 2-D case writer and scoring, bench/unet_baseline.py's early stopping.

Neither needs nnU-Net: the writer is nibabel and salt_seg only (nnunetv2 is only run by the script itself).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str):
    """Import ``bench/<name>.py`` (bench/ is a folder of scripts, not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def nnb():
    return _load("nnunet_baseline")


@pytest.fixture(scope="module")
def unb():
    return _load("unet_baseline")


CLASSES = {1: "disc", 2: "bar"}


@pytest.fixture
def tiny_dataset(tmp_path):
    """A one-case nnU-Net dataset (20 x 24 x 16 voxels, 0.5 x 2 x 3 mm) and a slice-level split along axis 2."""
    from salt_seg.data import load_dataset
    from salt_seg.data.split import Split, SplitEntry

    root = tmp_path / "ds"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    i, j = np.mgrid[:20, :24]
    label = np.zeros((20, 24, 16), np.uint8)
    label[((i - 10) ** 2 + (j - 12) ** 2 < 30)] = 1
    label[2:5, 3:20, 8:] = 2  # the bar only on slices 8..15
    rng = np.random.default_rng(0)
    image = (100.0 * label + rng.normal(0, 5, label.shape)).astype(np.float32)
    affine = np.diag([0.5, 2.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(image, affine), str(root / "imagesTr" / "c0_0000.nii.gz"))
    nib.save(nib.Nifti1Image(label, affine), str(root / "labelsTr" / "c0.nii.gz"))
    doc = {
        "name": "tiny",
        "channel_names": {"0": "T1"},
        "labels": {"background": 0, "disc": 1, "bar": 2},
        "numTraining": 1,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(doc))
    split = Split(
        "slice",
        shots=2,
        seed=0,
        axis=2,
        train=[SplitEntry("c0", [3, 10])],
        val=[SplitEntry("c0", [6])],
        test=[SplitEntry("c0", [0, 12, 14])],
    )
    return load_dataset(root), split


def test_case_writer_shapes_labels_and_dataset_json(nnb, tiny_dataset, tmp_path):
    from salt_seg.evaluation.labelled_slices import iter_labelled_slices

    ds, split = tiny_dataset
    raw = tmp_path / "raw" / "Dataset901_tiny"
    manifest = nnb.write_split_cases(ds, split, raw)
    assert [e["slice"] for e in manifest["train"]] == [3, 10]
    assert manifest["val"] == []  # fold 'all': validation slices are not written
    assert [e["slice"] for e in manifest["test"]] == [0, 12, 14]
    assert sorted(p.name for p in (raw / "imagesTr").iterdir()) == [
        "case_000_0000.nii.gz",
        "case_001_0000.nii.gz",
    ]
    assert sorted(p.name for p in (raw / "labelsTr").iterdir()) == ["case_000.nii.gz", "case_001.nii.gz"]
    assert len(list((raw / "imagesTs").iterdir())) == 3

    reference = {s.index: s for s in iter_labelled_slices(ds, axis=2, split=split, part="train", images=True)}
    for entry in manifest["train"]:
        ref = reference[entry["slice"]]
        img = nib.load(str(raw / "imagesTr" / f"{entry['name']}_0000.nii.gz"))
        lab = nib.load(str(raw / "labelsTr" / f"{entry['name']}.nii.gz"))
        assert img.shape == lab.shape == (*ref.label.shape, 1)
        assert img.get_data_dtype() == np.float32 and lab.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(np.asarray(lab.dataobj)[:, :, 0], ref.label)
        np.testing.assert_allclose(np.asarray(img.dataobj)[:, :, 0], ref.image)
        np.testing.assert_allclose(img.header.get_zooms()[:2], ref.spacing_mm)
        np.testing.assert_allclose(lab.affine, img.affine)
    assert sorted(np.unique(np.asarray(nib.load(str(raw / "labelsTr" / "case_001.nii.gz")).dataobj))) == [
        0,
        1,
        2,
    ]

    doc = json.loads((raw / "dataset.json").read_text())
    assert doc["channel_names"] == {"0": "T1"}
    assert doc["labels"] == {"background": 0, "disc": 1, "bar": 2}
    assert doc["numTraining"] == 2 and doc["file_ending"] == ".nii.gz"
    assert json.loads((raw / "cases.json").read_text()) == manifest


def test_case_writer_fold0_adds_validation_cases(nnb, tiny_dataset, tmp_path):
    ds, split = tiny_dataset
    raw = tmp_path / "raw"
    manifest = nnb.write_split_cases(ds, split, raw, include_val=True)
    assert [e["name"] for e in manifest["val"]] == ["case_002"]
    assert json.loads((raw / "dataset.json").read_text())["numTraining"] == 3
    path = nnb.write_fold0_split(tmp_path, manifest)
    assert json.loads(path.read_text()) == [{"train": ["case_000", "case_001"], "val": ["case_002"]}]
    with pytest.raises(FileExistsError):
        nnb.write_split_cases(ds, split, raw)


def test_scoring_follows_the_empty_mask_convention(nnb, tiny_dataset, tmp_path):
    ds, split = tiny_dataset
    raw = tmp_path / "raw"
    manifest = nnb.write_split_cases(ds, split, raw)
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    for e in manifest["test"]:
        lab = nib.load(str(raw / "labelsTs" / f"{e['name']}.nii.gz"))
        pred = np.asarray(lab.dataobj).copy()
        if e["slice"] == 0:  # the bar is absent from slice 0: predicting it there is a false positive
            pred[0:2, 0:2, 0] = 2
        nib.save(nib.Nifti1Image(pred, lab.affine), str(pred_dir / f"{e['name']}.nii.gz"))
    scores, summary = nnb.score_predictions(manifest, raw / "labelsTs", pred_dir, [1, 2])
    assert {s.case for s in scores} == {"c0"} and {s.slice_index for s in scores} == {0, 12, 14}
    table = nnb.per_class_table(summary, CLASSES)
    assert table["1"]["dice"]["mean"] == pytest.approx(1.0) and table["1"]["dice"]["n"] == 3
    # bar: slices 12 and 14 perfect, slice 0 a false positive (0); mean 2/3 over n = 3
    assert table["2"]["dice"]["mean"] == pytest.approx(2 / 3) and table["2"]["dice"]["n"] == 3
    assert table["2"]["counts"]["gt_empty"] == 1
    # without the false positive, slice 0 is both-empty for the bar: skipped, not scored 1
    nib.save(
        nib.Nifti1Image(np.asarray(nib.load(str(raw / "labelsTs" / "test_000.nii.gz")).dataobj), np.eye(4)),
        str(pred_dir / "test_000.nii.gz"),
    )
    table = nnb.per_class_table(
        nnb.score_predictions(manifest, raw / "labelsTs", pred_dir, [1, 2])[1], CLASSES
    )
    assert table["2"]["dice"]["n"] == 2 and table["2"]["counts"]["both_empty"] == 1
    assert "Dice mean" in nnb.format_dice(table)


def test_early_stopping_on_a_synthetic_curve(unb):
    curve = [(50, 0.1), (100, 0.3), (150, 0.5), (200, 0.49), (250, 0.5), (300, 0.45), (350, 0.6)]
    # 0.5 at step 250 only ties the best: not an improvement; three misses after step 150 stop at 300
    assert unb.stop_step(curve, patience=3) == (300, 150)
    assert unb.stop_step(curve, patience=4) == (350, 350)  # never runs out: the last step, best at the end
    assert unb.stop_step(curve, patience=0) == (350, 350)  # 0 = never stop
    # min_delta 0.25: 0.3 does not beat 0.1 by more than 0.25 (a miss), 0.5 does; then two misses
    assert unb.stop_step(curve, patience=2, min_delta=0.25) == (250, 150)

    es = unb.EarlyStopping(patience=2)
    assert es.update(10, math.nan) is False and es.best_step == -1  # a NaN score is never the best
    assert es.update(20, 0.2) is True and (es.best, es.best_step, es.bad) == (0.2, 20, 0)
    assert not es.update(30, 0.1) and not es.should_stop
    assert not es.update(40, 0.2) and es.should_stop
    assert [step for step, _ in es.history] == [10, 20, 30, 40]


def test_macro_dice_leaves_out_unscored_classes(unb):
    summary = {
        "1": {"dice": {"mean": 0.8, "std": 0.1, "n": 4}},
        "2": {"dice": {"mean": 0.4, "std": 0.1, "n": 4}},
        "3": {"dice": {"mean": math.nan, "std": math.nan, "n": 0}},
    }
    mean, per_class = unb.macro_dice(summary, [1, 2, 3, 4])
    assert mean == pytest.approx(0.6) and per_class == {"1": 0.8, "2": 0.4}
    assert math.isnan(unb.macro_dice({}, [1])[0])


@pytest.mark.parametrize(
    ("names", "flag", "mirroring", "trainer"),
    [
        (None, "auto", True, "nnUNetTrainer_5epochs"),
        ({"1": "disc_L", "2": "disc_R"}, "auto", False, "nnUNetTrainer_5epochs_NoMirroring"),
        ({"1": "disc_L", "2": "disc_R"}, "on", True, "nnUNetTrainer_5epochs"),
        (None, "off", False, "nnUNetTrainer_5epochs_NoMirroring"),
    ],
)
def test_mirroring_is_off_where_the_classes_pair_left_and_right(
    nnb, tiny_dataset, tmp_path, names, flag, mirroring, trainer
):
    """A mirror shows the left structure on the right under the left label: nnU-Net trains its no-mirroring
    twin (bench/nnunet_trainers) where the class names pair, and records which it trained."""
    from salt_seg.data import load_dataset, save_split

    ds, split = tiny_dataset
    if names is not None:
        doc = json.loads((ds.root / "dataset.json").read_text())
        doc["labels"] = {"background": 0, **{v: int(k) for k, v in names.items()}}
        (ds.root / "dataset.json").write_text(json.dumps(doc))
        assert load_dataset(ds.root).classes == {int(k): v for k, v in names.items()}
    save_split(split, tmp_path / "split.json")
    argv = ["--data", str(ds.root), "--split", str(tmp_path / "split.json"), "--work", str(tmp_path / "w")]
    result = nnb.main([*argv, "--stages", "write", "--mirroring", flag])
    assert result["mirroring"] is mirroring and result["trainer"] == trainer
    assert json.loads((tmp_path / "w" / "result.json").read_text())["trainer"] == trainer


def test_the_no_mirroring_trainers_are_where_nnunet_looks(nnb, tmp_path):
    env = nnb.nnunet_env(tmp_path, 1)
    folder = Path(env["nnUNet_extTrainer"])
    assert (folder / "salt_seg_trainers.py").is_file()
    pytest.importorskip("nnunetv2")  # CI does not install nnU-Net; where it is, check the classes themselves
    sys.path.insert(0, str(folder))
    try:
        import salt_seg_trainers as t
    finally:
        sys.path.remove(str(folder))
    from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring import (
        nnUNetTrainerNoMirroring,
    )

    cls = t.nnUNetTrainer_5epochs_NoMirroring
    assert issubclass(cls, nnUNetTrainerNoMirroring) and t.nnUNetTrainer_1epoch_NoMirroring
    import inspect

    assert list(inspect.signature(cls.__init__).parameters) == [
        "self",
        "plans",
        "configuration",
        "fold",
        "dataset_json",
        "device",
    ]
