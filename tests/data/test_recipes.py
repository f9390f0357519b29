"""Acceptance 6: ``salt-seg data prepare mni152-tissue`` and ``colin27-aal`` work offline; cards exist."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from salt_seg.cli import main
from salt_seg.data import check_dataset, load_dataset, load_split
from salt_seg.data.errors import DataError
from salt_seg.data.recipes import (
    AAL_STRUCTURES,
    MRICRON_TEMPLATES,
    RECIPES,
    ensure_mricron_data,
    read_aal_names,
)

REPO = Path(__file__).parents[2]
HAVE_MRICRON = (MRICRON_TEMPLATES / "ch2.nii.gz").is_file()


def test_every_recipe_has_a_card():
    for name in RECIPES:
        card = (REPO / "datasets" / name / "README.md").read_text()
        for heading in ("Source", "Licence", "Labels", "Split"):
            assert f"## {heading}" in card, (name, heading)


def test_prepare_mni152_tissue_offline(tmp_path, capsys):
    out = tmp_path / "mni"
    assert main(["data", "prepare", "mni152-tissue", "--out", str(out)]) == 0
    ds = load_dataset(out)
    assert ds.format == "nnunet" and ds.case_ids == ["mni152"]
    assert ds.classes == {1: "grey_matter", 2: "white_matter", 3: "other_brain"}
    report = check_dataset(ds)
    assert report.ok
    (case,) = report.cases
    assert case.shape == (197, 233, 189) and case.axcodes == "RAS"
    from nilearn import datasets as nl

    p_gm = np.asanyarray(nl.load_mni152_gm_template(resolution=1).dataobj)
    brain = np.asanyarray(nl.load_mni152_brain_mask(resolution=1).dataobj) > 0
    assert case.label_voxels[1] == int((brain & (p_gm >= 0.5)).sum())
    assert case.label_voxels[1] + case.label_voxels[2] + case.label_voxels[3] == int(brain.sum())
    split = load_split(out / "split.json")
    assert split.level == "slice" and split.guard_mm == 10.0 and sum(len(e.slices) for e in split.train) == 5
    assert split.min_distance_mm({"mni152": 1.0}) >= 10.0
    capsys.readouterr()


@pytest.mark.skipif(
    not HAVE_MRICRON,
    reason="Debian package mricron-data is not installed "
    "(apt-get install -y mricron-data); the recipe would install it when run as root",
)
def test_prepare_colin27_aal_offline(tmp_path, capsys):
    out = tmp_path / "colin"
    assert main(["data", "prepare", "colin27-aal", "--out", str(out), "--no-install"]) == 0
    ds = load_dataset(out)
    assert ds.case_ids == ["colin27"] and len(ds.classes) == 12
    assert ds.classes[1] == "hippocampus_L" and ds.classes[2] == "hippocampus_R"
    report = check_dataset(ds)
    assert report.ok
    (case,) = report.cases
    assert case.shape == (181, 217, 181)
    assert all(case.label_voxels.get(c, 0) > 1000 for c in ds.classes)  # every structure is present
    image = ds.load_image("colin27")
    label = ds.load_label("colin27", image).to_ras()
    # left structures lie on the patient's left: x (RAS) < 0 mm
    ijk = np.argwhere(label.data == 1).mean(axis=0)
    assert label.voxel_to_world(ijk)[0, 0] < 0
    assert load_split(out / "split.json").min_distance_mm({"colin27": 1.0}) >= 10.0
    capsys.readouterr()


@pytest.mark.skipif(not HAVE_MRICRON, reason="Debian package mricron-data is not installed")
def test_aal_names_cover_the_recipe_structures():
    names = read_aal_names(MRICRON_TEMPLATES / "aal.nii.txt")
    assert all(r in names for regions in AAL_STRUCTURES.values() for r in regions)
    assert names["Hippocampus_L"] == 37


def test_missing_atlas_explains_how_to_install(tmp_path):
    with pytest.raises(DataError, match=r"apt-get install mricron-data\), or pass --source DIR"):
        ensure_mricron_data(tmp_path)
    (tmp_path / "aal.nii.txt").write_text("no table\n")
    with pytest.raises(DataError, match="no '<value> <name>' lines"):
        read_aal_names(tmp_path / "aal.nii.txt")
