"""Per-slice class tables (salt_seg/data/slice_info.py): read once from the labels, along every axis."""

from __future__ import annotations

from salt_seg.data import load_dataset
from salt_seg.data.slice_info import read_slice_infos, slice_info_from_dataset

from .conftest import write_atlas


def test_slice_infos_note_each_slices_classes_along_every_axis(tmp_path):
    dataset = load_dataset(write_atlas(tmp_path / "atlas"))
    infos = read_slice_infos(dataset)
    z = infos[2]["atlas"]
    assert (z.n_slices, z.spacing_mm, z.foreground) == (60, 1.0, tuple(range(5, 55)))
    assert z.classes[4] == () and z.classes[44] == (1,) and z.classes[45] == (2,)
    x = infos[0]["atlas"]
    assert x.foreground == tuple(range(5, 35)) and x.classes[5] == (1, 2) and x.classes[35] == ()
    assert slice_info_from_dataset(dataset, 2) == infos[2]
