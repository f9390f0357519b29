"""``salt-seg predict`` outputs are whole or absent (issue 14): folder-level sidecars only with a label map, file
system refusals as one line naming the file, and the help text telling the defaults."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest

from salt_seg.cli import main
from tests.data.conftest import write_nifti
from tests.inference.conftest import AFFINES, S
from tests.inference.test_predict_command import oracle_cli  # noqa: F401 - the fixture

QUIET = ["--no-progress", "--device", "cpu", "--threads", "1"]


def test_a_batch_with_no_good_case_writes_no_sidecars(tmp_path: Path, tiny_run: Path, capsys) -> None:
    folder = tmp_path / "cases"
    folder.mkdir()
    (folder / "bad.nii.gz").write_bytes(b"garbage")
    out = tmp_path / "out"
    rc = main(["predict", "--model", str(tiny_run), "--input", str(folder), "--output", str(out), *QUIET])
    assert rc == 1
    assert not out.exists()  # no labels.ctbl, labels_itksnap.txt or predict_summary.json without a label map
    printed = capsys.readouterr().out
    assert "FAILED  bad:" in printed and f"0 ok, 1 failed; nothing written to {out}" in printed


def test_a_failed_case_in_an_existing_folder_leaves_it_as_it_was(tmp_path: Path, tiny_run: Path) -> None:
    (tmp_path / "bad.nii.gz").write_bytes(b"garbage")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc = main(
        [
            "predict",
            "--model",
            str(tiny_run),
            "--input",
            str(tmp_path / "bad.nii.gz"),
            "--output",
            str(out),
            *QUIET,
        ]
    )
    assert rc == 1
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


@pytest.mark.parametrize(
    ("code", "cause"),
    [(errno.EROFS, "read-only file system"), (errno.ENOSPC, "no space left on device (disk full)")],
)
def test_a_refused_write_is_one_line_naming_the_file(
    tmp_path: Path, tiny_run: Path, monkeypatch: pytest.MonkeyPatch, capsys, code: int, cause: str
) -> None:
    import nibabel as nib

    def refuse(img, filename):  # noqa: ANN001 - nibabel.save's signature
        raise OSError(code, "refused", filename)

    src = write_nifti(tmp_path / "case.nii.gz", np.zeros((16, 16, 3)), AFFINES["ras"])
    monkeypatch.setattr(nib, "save", refuse)
    out = tmp_path / "out"
    rc = main(["predict", "--model", str(tiny_run), "--input", str(src), "--output", str(out), *QUIET])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err == [
        f"salt-seg predict: error: {out / 'case.nii.gz'}: {cause}"
    ]  # the real name, not the temp one
    assert not out.exists()  # nothing half-written


def test_help_states_the_real_score_threshold_default(capsys) -> None:
    from salt_seg.inference import InferenceSettings

    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert InferenceSettings().score_threshold == 0.0
    assert (
        "--score-threshold F auto mode: keep a class token's slice mask only at this confidence or above "
        "(default 0 = keep all)" in text
    )
    assert "0.6)" not in text.split("--score-threshold", 1)[1].split("--iou-threshold", 1)[0]


def test_nnunet_channel_files_are_named_like_their_ground_truth(tmp_path: Path, oracle_cli) -> None:  # noqa: F811
    """``case_0000.nii.gz`` writes ``case.nii.gz``, which ``evaluate --gt labelsTr`` pairs with its label."""
    obj = np.zeros((S, 40, 4), bool)
    obj[10:30, 8:20, 1:3] = True
    images = tmp_path / "imagesTs"
    write_nifti(images / "liver_001_0000.nii.gz", np.where(obj, 0.9, 0.1).astype(np.float32), AFFINES["ras"])
    write_nifti(tmp_path / "labelsTr" / "liver_001.nii.gz", obj.astype(np.uint8), AFFINES["ras"])
    out = tmp_path / "pred"
    (tmp_path / "p.json").write_text(
        json.dumps({"prompts": [{"box": [8, 6, 31, 21], "slice_index": 2, "axis": 2, "class_id": 1}]})
    )
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "liver_001.json").write_text((tmp_path / "p.json").read_text())
    rc = main(
        [
            "predict",
            "--model",
            "x",
            "--input",
            str(images),
            "--output",
            str(out),
            "--prompts",
            str(prompts),
            *QUIET,
        ]
    )
    assert rc == 0
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["liver_001.nii.gz"]
    rc = main(["evaluate", "--pred", str(out), "--gt", str(tmp_path / "labelsTr"), "--per-volume"])
    assert rc == 0
    doc = json.loads((out / "evaluation" / "evaluation.json").read_text())
    assert doc["cases"] == ["liver_001"]


@pytest.mark.parametrize(
    ("names", "dataset_json", "expected"),
    [
        (["a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz", "b_0001.nii.gz"], False, {"a": 2, "b": 2}),
        (["a_0000.nii.gz", "a_0001.nii.gz"], True, {"a": 2}),
        (["a_0000.nii.gz", "b_0000.nii.gz"], False, {"a": 1, "b": 1}),
        # one base numbered 0..2 with nothing to confirm channels: may be three scans, so names stay
        (
            ["scan_0000.nii.gz", "scan_0001.nii.gz", "scan_0002.nii.gz"],
            False,
            {"scan_0000": 1, "scan_0001": 1, "scan_0002": 1},
        ),
        (["x_2023.nii.gz", "y.nii.gz"], False, {"x_2023": 1, "y": 1}),
    ],
)
def test_channel_grouping(
    tmp_path: Path, names: list[str], dataset_json: bool, expected: dict[str, int]
) -> None:
    from salt_seg.inference.batch import find_cases

    folder = tmp_path / "imagesTs"
    for n in names:
        write_nifti(folder / n, np.zeros((4, 4, 2)), AFFINES["ras"])
    if dataset_json:
        (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1", "1": "T2"}}))
    cases = find_cases(folder)
    assert {c.name: max(1, len(c.channels)) for c in cases} == expected
    two = [c for c in cases if len(c.channels) == 2]
    for c in two:
        assert [p.name for p in c.channels] == [f"{c.name}_0000.nii.gz", f"{c.name}_0001.nii.gz"]
        assert c.load().n_channels == 2
