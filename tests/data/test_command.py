"""``salt-seg data`` (salt_seg/commands/data.py): check, prepare, split, list; failures write nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from salt_seg.cli import main
from salt_seg.commands import data as data_command

from .conftest import tree, write_atlas, write_nifti
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
    assert "left/right pairs" not in out  # liver and tumour pair with nothing


def test_check_names_the_left_right_pairs_a_flip_exchanges(tmp_path, capsys):
    root = make_nnunet(tmp_path / "lat")
    doc = json.loads((root / "dataset.json").read_text())
    doc["labels"] = {"background": 0, "kidney_L": 1, "kidney_R": 2}
    (root / "dataset.json").write_text(json.dumps(doc))
    code, out, _ = _run(["data", "check", str(root)], capsys)
    assert code == 0
    assert "left/right pairs (a training flip exchanges them, data.lateral_flip): kidney_L<->kidney_R" in out


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
    code, _, err = _run(
        ["data", "split", str(root), "--shots", "5", "--level", "volume", "--out", str(out)], capsys
    )
    assert (
        code == 2
        and "cannot draw 5 training case(s) (--shots 5): only 0 of 2 labelled case(s) are left" in err
    )
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
            "--level",
            "volume",
            "--out",
            str(tmp_path / "v.json"),
        ],
        capsys,
    )
    assert (
        code == 2
        and "--protocol sparse applies to slice-level splits (--level slice), got --level volume" in err
    )
    assert not (tmp_path / "v.json").exists()


# --- issue 14: data split agrees with train and speaks in flags -----------------------------------------------------
def test_split_defaults_to_slices_as_train_does(tmp_path, capsys):
    from salt_seg.cli import build_parser
    from salt_seg.training.config import DataSection

    parsed = build_parser().parse_args(["data", "split", "d", "--shots", "1", "--out", "s.json"])
    assert (parsed.level, parsed.protocol, parsed.guard_mm, parsed.val, parsed.test) == (
        "slice",
        "block",
        10.0,
        0.2,
        0.4,
    )
    cfg = DataSection()
    assert (cfg.holdout, cfg.protocol, cfg.guard_mm, cfg.val, cfg.test) == ("slices", "block", 10.0, 0.2, 0.4)
    root = write_atlas(tmp_path / "atlas")  # one volume: a volume-level split cannot be drawn from it
    out = tmp_path / "s.json"
    code, text, err = _run(
        ["data", "split", str(root), "--shots", "4", "--guard-mm", "2", "--out", str(out)], capsys
    )
    assert code == 0, err
    doc = json.loads(out.read_text())
    assert (doc["level"], doc["protocol"], doc["guard_mm"]) == ("slice", "block", 2.0)
    assert sum(len(e["slices"]) for e in doc["train"]) == 4 and "train 4," in text and "slices" in text


def test_volume_split_of_one_volume_suggests_level_slice(tmp_path, capsys):
    root = write_atlas(tmp_path / "atlas")
    out = tmp_path / "s.json"
    code, _, err = _run(
        ["data", "split", str(root), "--shots", "1", "--level", "volume", "--out", str(out)], capsys
    )
    assert code == 2 and err.count("\n") == 1
    assert (
        "cannot draw 1 training case(s) (--shots 1): only 0 of 1 labelled case(s) are left after val and test"
        in err
    )
    assert (
        "lower --shots, --val or --test, or hold out slices instead of whole volumes (--level slice)" in err
    )
    assert not out.exists()


def test_split_warns_in_flags_when_a_held_out_class_is_in_no_training_slice(tmp_path, capsys, caplog):
    root = write_atlas(tmp_path / "atlas")  # 'top' (2) only in the ten highest axial slices
    out = tmp_path / "s.json"
    argv = ["data", "split", str(root), "--shots", "4", "--guard-mm", "2", "--seed", "0"]
    with caplog.at_level("WARNING", logger="salt_seg.data.split"):
        code, _, err = _run([*argv, "--out", str(out)], capsys)
    assert code == 0, err
    [message] = [r.message for r in caplog.records if r.name == "salt_seg.data.split"]
    assert message.startswith("class(es) 2 (top) appear in val or test slices but in no training slice")
    assert "split along axis 0 (sagittal, --axis 0) or 1 (coronal, --axis 1)" in message
    assert json.loads(out.read_text())["meta"]["classes_missing_from_train"] == [2]
    caplog.clear()
    with caplog.at_level("WARNING", logger="salt_seg.data.split"):
        code, _, err = _run([*argv, "--axis", "0", "--out", str(tmp_path / "x.json")], capsys)
    assert code == 0 and not caplog.records  # the suggested axis trains on both classes
    assert "classes_missing_from_train" not in json.loads((tmp_path / "x.json").read_text())["meta"]


def test_split_errors_name_the_flags_the_user_typed(tmp_path, capsys):
    root = write_atlas(tmp_path / "atlas")  # 50 labelled axial slices of 1 mm
    base = ["data", "split", str(root), "--shots", "4", "--out", str(tmp_path / "s.json")]
    code, _, err = _run([*base, "--guard-mm", "30"], capsys)
    assert code == 2
    assert "lower --guard-mm, --val or --test, or split whole volumes (--level volume)" in err
    code, _, err = _run([*base, "--guard-mm", "10", "--protocol", "sparse"], capsys)
    assert code == 2
    assert "lower --guard-mm to 6 or less, lower --shots, or use --protocol block" in err
    code, _, err = _run([*base, "--val", "2"], capsys)
    assert (
        code == 2 and "slice-level splits (--level slice) take --val as a fraction in [0, 1), got 2.0" in err
    )
    assert "guard_mm" not in err and "level=" not in err
