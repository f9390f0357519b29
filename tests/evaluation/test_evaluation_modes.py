"""``evaluate`` (issue 14): each mode gets its own folder and ``evaluation.json`` says how it was made; a predicted
label that no ground truth knows is refused, not scored as a new class."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from salt_seg.cli import main
from salt_seg.commands.evaluate import evaluation_folder
from tests.inference.conftest import copy_run_with_data, tiny_run  # noqa: F401 - the fixture, shared with the predict tests

SPACING = (1.0, 1.0, 2.0)


def _cube(label: int = 1) -> np.ndarray:
    m = np.zeros((12, 12, 6), np.uint8)
    m[3:8, 3:8, 1:5] = label
    return m


@pytest.mark.parametrize(
    ("part", "prompt", "default", "overlap", "folder"),
    [
        ("test", "auto", "auto", "label_map", "evaluation"),
        ("test", "box", "auto", "label_map", "evaluation_box"),
        ("test", "box", "box", "label_map", "evaluation"),
        ("train", "point", "auto", "independent", "evaluation_train_point_independent"),
        ("val", "auto", "auto", "independent", "evaluation_val_independent"),
    ],
)
def test_each_mode_has_its_own_folder(
    part: str, prompt: str, default: str, overlap: str, folder: str
) -> None:
    p = {"part": part, "prompt": prompt, "prompt_default": default, "overlap": overlap}
    assert evaluation_folder(p) == folder
    assert evaluation_folder(p | {"mirror": False}) == folder
    assert evaluation_folder(p | {"mirror": True}) == folder + "_mirror"  # never overwrites the plain one


def test_folders_evaluation_json_records_its_source(tmp_path: Path, nifti) -> None:
    nifti(tmp_path / "gt" / "c1.nii.gz", _cube(), SPACING)
    nifti(tmp_path / "pred" / "c1.nii.gz", _cube(), SPACING)
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]) == 0
    doc = json.loads((tmp_path / "pred" / "evaluation" / "evaluation.json").read_text())
    assert doc["provenance"] == {
        "source": "files",
        "pred": str(tmp_path / "pred"),
        "gt": str(tmp_path / "gt"),
        "split": None,
    }


def test_a_label_absent_from_the_ground_truth_is_refused(tmp_path: Path, nifti, capsys) -> None:
    nifti(tmp_path / "gt" / "c1.nii.gz", _cube(), SPACING)
    pred = _cube()
    pred[0, 0, 0] = 7
    nifti(tmp_path / "pred" / "c1.nii.gz", pred, SPACING)
    rc = main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err == [
        f"salt-seg evaluate: error: {tmp_path / 'pred' / 'c1.nii.gz'}: label 7 is in no ground truth's label set "
        "(labels in any ground-truth file: 1); fix the prediction or pass --classes to score only some labels"
    ]
    assert not (tmp_path / "pred" / "evaluation").exists()
    # naming the classes to score is the way to evaluate the known labels only
    rc = main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--classes", "1"])
    assert rc == 0
    doc = json.loads((tmp_path / "pred" / "evaluation" / "evaluation.json").read_text())
    assert doc["class_ids"] == [1]


def test_a_label_named_in_dataset_json_but_absent_from_this_gt_is_a_class(tmp_path: Path, nifti) -> None:
    nifti(tmp_path / "data" / "labelsTr" / "c1.nii.gz", _cube(), SPACING)
    (tmp_path / "data" / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "a": 1, "b": 2}}))
    pred = _cube()
    pred[0, 0, 0] = 2
    nifti(tmp_path / "pred" / "c1.nii.gz", pred, SPACING)
    assert (
        main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "data" / "labelsTr")]) == 0
    )
    doc = json.loads((tmp_path / "pred" / "evaluation" / "evaluation.json").read_text())
    assert doc["class_ids"] == [1, 2]


@pytest.fixture
def run_with_data(tmp_path: Path, tiny_run: Path) -> Path:  # noqa: F811 - the imported fixture
    """A copy of the tiny run, pointed at a small shapes dataset with a one-case test part."""
    from salt_seg.data.recipes import build_synthetic_shapes

    data = tmp_path / "ds"
    build_synthetic_shapes(data, n_cases=4, size=64, depth=8)
    return copy_run_with_data(tiny_run, data, tmp_path / "run")


def test_box_evaluation_keeps_the_default_one_and_says_how_each_was_made(run_with_data: Path) -> None:
    run = run_with_data
    base = ["evaluate", "--model", str(run), "--device", "cpu"]
    assert main(base) == 0
    assert main([*base, "--prompt", "box", "--overlap", "independent"]) == 0
    default = json.loads((run / "evaluation" / "evaluation.json").read_text())["provenance"]
    box = json.loads((run / "evaluation_box_independent" / "evaluation.json").read_text())["provenance"]
    assert (default["part"], default["prompt"], default["overlap"]) == ("test", "auto", "label_map")
    assert (box["part"], box["prompt"], box["overlap"]) == ("test", "box", "independent")
    assert default["model"] == box["model"] == str(run)
