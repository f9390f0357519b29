"""``salt-seg data`` (salt_seg/commands/data.py): check, prepare, split, list; failures write nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from salt_seg.cli import main
from salt_seg.commands import data as data_command

from .conftest import tree, write_nifti
from .test_formats import make_nnunet


def _run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_check_ok_prints_summary(tmp_path, capsys):
    root = make_nnunet(tmp_path / "toy")
    before = tree(root)
    code, out, _ = _run(["data", "check", str(root)], capsys)
    assert code == 0
    assert "dataset 'toy' (nnunet)" in out
    assert "2 case(s), 2 labelled; channels: CT, PET; classes: 1=liver, 2=tumour" in out
    assert "liver_001: 6x7x5 vox, 0.9x0.9x2 mm, RAS, 2 ch, label voxels 2:18" in out
    assert "problems: 0" in out
    assert tree(root) == before


def test_check_reports_a_broken_dataset_and_writes_nothing(tmp_path, capsys):
    root = make_nnunet(tmp_path / "toy")
    (root / "labelsTr" / "liver_001.nii.gz").unlink()  # missing label
    write_nifti(
        root / "labelsTr" / "liver_002.nii.gz", np.full((6, 7, 5), 9, np.uint8), np.diag([0.9, 0.9, 2, 1.0])
    )
    write_nifti(
        root / "imagesTr" / "liver_003_0000.nii.gz", np.zeros((6, 7, 5)), np.eye(4), np.float32
    )  # no _0001
    before = tree(root)
    code, out, _ = _run(["data", "check", str(root)], capsys)
    assert code == 1
    assert "problems: 3" in out
    assert "label for case liver_001 is missing" in out
    assert "label values [9] are not among the declared classes [0, 1, 2]" in out
    assert "case liver_003 lacks channel file(s) [1]" in out
    assert tree(root) == before


def test_check_not_a_dataset_is_a_user_error(tmp_path, capsys):
    code, _, err = _run(["data", "check", str(tmp_path)], capsys)
    assert code == 2
    assert err.startswith("salt-seg data: error: ") and "not a dataset in any known layout" in err
    assert err.count("\n") == 1


def test_prepare_synthetic_then_check_and_split(tmp_path, capsys):
    out_dir = tmp_path / "built" / "shapes"
    code, out, _ = _run(["data", "prepare", "synthetic-shapes", "--out", str(out_dir), "--seed", "3"], capsys)
    assert code == 0 and "prepared synthetic-shapes" in out
    assert (out_dir / "dataset.json").is_file() and (out_dir / "split.json").is_file()
    assert [p.name for p in out_dir.parent.iterdir()] == ["shapes"]  # no temp folder left
    assert _run(["data", "check", str(out_dir)], capsys)[0] == 0
    split_file = tmp_path / "s.json"
    code, out, _ = _run(
        ["data", "split", str(out_dir), "--shots", "3", "--seed", "1", "--out", str(split_file)], capsys
    )
    assert code == 0 and "train 3" in out
    doc = json.loads(split_file.read_text())
    assert doc["kind"] == "salt_seg.split" and len(doc["train"]) == 3
    code, _, err = _run(["data", "split", str(out_dir), "--shots", "3", "--out", str(split_file)], capsys)
    assert code == 2 and "already exists" in err


def test_prepare_failure_writes_nothing(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out_dir = tmp_path / "new" / "colin"
    code, _, err = _run(
        ["data", "prepare", "colin27-aal", "--source", str(empty), "--out", str(out_dir)], capsys
    )
    assert code == 2
    assert "missing ['ch2.nii.gz', 'aal.nii.gz', 'aal.nii.txt']" in err and "mricron-data" in err
    assert tree(tmp_path) == {"empty"}


def test_prepare_refuses_existing_out_and_inapplicable_flags(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    code, _, err = _run(["data", "prepare", "synthetic-shapes", "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "already exists" in err and "--force" in err
    code, _, err = _run(
        ["data", "prepare", "mni152-tissue", "--source", "/tmp", "--out", str(tmp_path / "y")], capsys
    )
    assert code == 2 and "--source does not apply to recipe mni152-tissue" in err
    assert tree(tmp_path) == {"x"}


def test_split_failure_writes_nothing(tmp_path, capsys):
    root = make_nnunet(tmp_path / "toy")
    out = tmp_path / "split.json"
    code, _, err = _run(["data", "split", str(root), "--shots", "5", "--out", str(out)], capsys)
    assert code == 2 and "shots=5 but only" in err
    assert not out.exists()


def test_list_and_choices_match_registries(capsys):
    from salt_seg.data import DATASET_FORMATS, RECIPES

    assert set(data_command._FORMATS) == {"auto", *DATASET_FORMATS}
    assert set(data_command._RECIPES) == set(RECIPES)
    code, out, _ = _run(["data", "list"], capsys)
    assert code == 0 and "nnunet" in out and "colin27-aal" in out


def test_help_imports_nothing_heavy():
    code = (
        "import sys; from salt_seg.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'monai', 'nibabel', 'SimpleITK', 'pydicom') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[2],
    )
    assert "monai" not in out.stdout and "nibabel" not in out.stdout and "pydicom" not in out.stdout


def test_split_protocol_option(tmp_path, capsys):
    out_dir = tmp_path / "shapes"
    assert _run(["data", "prepare", "synthetic-shapes", "--out", str(out_dir), "--seed", "3"], capsys)[0] == 0
    split_file = tmp_path / "sparse.json"
    argv = ["data", "split", str(out_dir), "--level", "slice", "--guard-mm", "2", "--protocol", "sparse"]
    code, _, err = _run([*argv, "--shots", "4", "--out", str(split_file)], capsys)
    assert code == 2 and "over 12 case(s) leave 0 gap(s)" in err and not split_file.exists()
    code, out, _ = _run([*argv, "--shots", "24", "--out", str(split_file)], capsys)  # 2 per case
    assert code == 0 and "train 24" in out and "sparse protocol" in out
    doc = json.loads(split_file.read_text())
    assert doc["protocol"] == "sparse" and doc["level"] == "slice"
    code, _, err = _run(
        [
            "data",
            "split",
            str(out_dir),
            "--shots",
            "1",
            "--protocol",
            "sparse",
            "--out",
            str(tmp_path / "v.json"),
        ],
        capsys,
    )
    assert code == 2 and "protocol='sparse' applies to slice-level splits" in err
    assert not (tmp_path / "v.json").exists()
