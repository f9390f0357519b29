"""Label-name sidecars against their documented formats: JSON, 3D Slicer .ctbl, ITK-SNAP label description."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from salt_seg.inference import (
    itksnap_labels,
    slicer_ctbl,
    write_itksnap_labels,
    write_label_json,
    write_slicer_ctbl,
)
from salt_seg.inference.sidecars import PALETTE

NAMES = {2: "spleen tumour", 1: "liver", 17: 'odd "name"'}


def test_json_sidecar(tmp_path: Path) -> None:
    path = write_label_json(tmp_path / "case.json", NAMES, case="case", summary={"x": 1})
    doc = json.loads(path.read_text())
    assert doc["labels"] == {"0": "background", "1": "liver", "2": "spleen tumour", "17": 'odd "name"'}
    assert doc["colors"]["1"] == list(PALETTE[0]) and doc["colors"]["2"] == list(PALETTE[1])
    assert doc["colors"]["17"] == list(PALETTE[16 % len(PALETTE)])
    assert doc["case"] == "case" and doc["summary"] == {"x": 1}
    with pytest.raises(FileExistsError):
        write_label_json(path, NAMES)


def test_slicer_color_table_format(tmp_path: Path) -> None:
    """Slicer: '# Color table file' header, '#' comments, then 'index name R G B A' (0-255, no spaces in names)."""
    path = write_slicer_ctbl(tmp_path / "labels.ctbl", NAMES)
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# Color table file ")
    assert lines[1] == "# 4 values"
    rows = [ln.split() for ln in lines if not ln.startswith("#")]
    assert all(len(r) == 6 for r in rows)
    parsed = {int(r[0]): (r[1], tuple(int(v) for v in r[2:])) for r in rows}
    assert parsed == {
        0: ("Background", (0, 0, 0, 0)),
        1: ("liver", (*PALETTE[0], 255)),
        2: ("spleen_tumour", (*PALETTE[1], 255)),
        17: ('odd_"name"', (*PALETTE[0], 255)),
    }
    assert all(0 <= v <= 255 for _, rgba in parsed.values() for v in rgba)
    assert slicer_ctbl({1: "a"}, "t").endswith("\n")


def test_itksnap_label_description_format(tmp_path: Path) -> None:
    """ITK-SNAP: the documented comment block, then 'IDX R G B A VIS MSH "LABEL"' with A in 0..1."""
    path = write_itksnap_labels(tmp_path / "labels_itksnap.txt", NAMES)
    text = path.read_text()
    assert text.startswith(
        "################################################\n# ITK-SnAP Label Description File\n"
    )
    assert "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL" in text
    pattern = re.compile(r'^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+([0-9.]+)\s+([01])\s+([01])\s+"([^"]*)"\s*$')
    rows = [ln for ln in text.splitlines() if not ln.startswith("#")]
    parsed = {}
    for ln in rows:
        m = pattern.match(ln)
        assert m, ln
        parsed[int(m[1])] = (int(m[2]), int(m[3]), int(m[4]), float(m[5]), int(m[6]), int(m[7]), m[8])
    assert parsed[0] == (0, 0, 0, 0.0, 0, 0, "Clear Label")
    assert parsed[1] == (*PALETTE[0], 1.0, 1, 1, "liver")
    assert parsed[2] == (*PALETTE[1], 1.0, 1, 1, "spleen tumour")
    assert parsed[17][-1] == "odd 'name'"  # double quotes would end the field
    assert len(parsed) == 4
    assert itksnap_labels({1: "a"}).count("\n") == text.count("\n") - 2  # two labels fewer


def test_json_sidecar_reads_back_names_and_colours(tmp_path: Path) -> None:
    from salt_seg.inference.sidecars import read_label_json

    path = write_label_json(tmp_path / "case.json", NAMES, colors={2: (1, 2, 3)}, case="case")
    names, colors = read_label_json(path)
    assert names == {1: "liver", 2: "spleen tumour", 17: 'odd "name"'}
    assert colors == {1: PALETTE[0], 2: (1, 2, 3), 17: PALETTE[16 % len(PALETTE)]}
    assert json.loads(path.read_text())["colors"]["2"] == [1, 2, 3]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("not json", "not a JSON label sidecar"),
        ('{"colors": {}}', "no 'labels' object"),
        ('{"labels": {"one": "liver"}}', "label id 'one' is not a non-negative integer"),
        ('{"labels": {"1": "liver"}, "colors": {"1": [300, 0, 0]}}', "colour of label '1' must be [r, g, b]"),
    ],
)
def test_a_bad_json_sidecar_is_one_readable_error(tmp_path: Path, text: str, problem: str) -> None:
    from salt_seg.inference.sidecars import read_label_json

    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(f"bad.json: {problem}")):
        read_label_json(path)
