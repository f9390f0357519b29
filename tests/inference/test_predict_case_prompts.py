"""predict_case(prompts_for=...): prompts made from the prepared volume give what the same prompt file gives."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np

from salt_seg.inference import LoadedModel
from salt_seg.inference.batch import PredictOptions, find_cases, predict_case
from salt_seg.inference.coords import source_axis
from salt_seg.prompts import Prompt, plane_axes, save_prompts
from tests.inference.conftest import OracleModel, ellipsoid, las_affine, oracle_record


def test_prompts_from_the_prepared_volume_equal_the_prompt_file_route(tmp_path: Path) -> None:
    shape = (40, 36, 12)
    blob = ellipsoid(shape, (20, 18, 6), (7, 6, 4))
    image = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(np.where(blob, 1.0, 0.0).astype(np.float32), las_affine()), str(image))
    record = replace(oracle_record({1: "blob"}), intensity="minmax")
    loaded = LoadedModel(OracleModel(small=1), record, {1: "blob"}, {})  # type: ignore[arg-type]
    seen: list[int] = []

    def prompts_for(prepared) -> list[Prompt]:  # a click on the blob's centre, on the model's slicing axis
        axis = source_axis(prepared)
        seen.append(axis)
        u, v = plane_axes(axis)
        centre = (20, 18, 6)
        return [
            Prompt(points=[(centre[u], centre[v])], point_labels=[1], slice_index=centre[axis], axis=axis)
        ]

    options = PredictOptions(mode="prompts", progress=False)
    case = find_cases(image)[0]
    predict_case(loaded, case, tmp_path / "from_callable", options, prompts_for=prompts_for)
    assert seen == [2]
    got = np.asarray(nib.load(str(tmp_path / "from_callable" / "case.nii.gz")).dataobj)

    save_prompts(tmp_path / "case.json", [Prompt(points=[(20, 18)], point_labels=[1], slice_index=6, axis=2)])
    case.prompts = tmp_path / "case.json"
    predict_case(loaded, case, tmp_path / "from_file", options)
    want = np.asarray(nib.load(str(tmp_path / "from_file" / "case.nii.gz")).dataobj)

    np.testing.assert_array_equal(got, want)
    assert got[20, 18, 6] == 1
    np.testing.assert_array_equal(got[..., 6] == 1, blob[..., 6])  # the clicked slice: exactly the blob
    assert not got[..., :6].any() and not got[..., 7:].any()  # prompts mode: that slice only
