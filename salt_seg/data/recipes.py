"""Dataset recipes: build ready-to-train datasets from data that installs offline (``salt-seg data prepare``).

=================  =========================================================================================
name               source and labels
=================  =========================================================================================
mni152-tissue      PyPI ``nilearn``: MNI152 2009a T1 template (1 mm, 197x233x189) with grey matter, white
                   matter (probability >= 0.5) and "other brain" (the rest of nilearn's brain mask)
colin27-aal        Debian ``mricron-data``: Colin27 T1 (``ch2.nii.gz``, with skull) and the AAL atlas; six deep
                   grey-matter / limbic structures, left and right kept apart (12 classes)
synthetic-shapes   generated 3-D volumes (ellipsoids, cuboids, cylinders), seeded
=================  =========================================================================================

Each recipe writes nnU-Net v2 layout plus ``split.json`` (a default few-shot split) into a temporary folder
next to ``--out``; :func:`prepare_dataset` validates the result with :func:`salt_seg.data.load_dataset` and
:func:`salt_seg.data.check.check_dataset` and only then renames it into place, so a failure writes nothing.
Atlas files are read from the installed packages and never copied into the repository. Dataset cards:
``datasets/<name>/README.md``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from salt_seg.data.check import check_dataset
from salt_seg.data.errors import DataError
from salt_seg.data.formats import load_dataset
from salt_seg.data.split import make_split, save_split
from salt_seg.data.synthetic import SHAPES_3D, synthetic_3d
from salt_seg.data.volume import Volume
from salt_seg.data.writers import write_nnunet_dataset
from salt_seg.io import atomic_folder

logger = logging.getLogger(__name__)

MRICRON_TEMPLATES = Path("/usr/share/mricron/templates")
#: AAL regions of the colin27-aal recipe: class name -> AAL region names (from ``aal.nii.txt``).
AAL_STRUCTURES: dict[str, tuple[str, ...]] = {
    "hippocampus": ("Hippocampus_L", "Hippocampus_R"),
    "amygdala": ("Amygdala_L", "Amygdala_R"),
    "caudate": ("Caudate_L", "Caudate_R"),
    "putamen": ("Putamen_L", "Putamen_R"),
    "pallidum": ("Pallidum_L", "Pallidum_R"),
    "thalamus": ("Thalamus_L", "Thalamus_R"),
}


@dataclass(frozen=True)
class Recipe:
    """A dataset recipe: ``build(out, **options)`` writes the dataset into the empty folder ``out``."""

    name: str
    description: str
    build: Callable[..., None]


def _nifti_volume(img: Any, name: str, modality: str = "image", label: bool = False) -> Volume:
    """A canonical (RAS, :meth:`Volume.to_ras`) Volume from a nibabel image."""
    data = np.asanyarray(img.dataobj)
    data = np.rint(data).astype(np.int16) if label else data.astype(np.float32)
    ras = Volume(data, img.affine).to_ras()
    return Volume(ras.array, ras.affine, modality=modality, name=name)


def _same_grid(a: Any, b: Any) -> bool:
    return a.shape[:3] == b.shape[:3] and np.allclose(a.affine, b.affine, atol=1e-3)


# --- mni152-tissue --------------------------------------------------------------------------------------------------
def build_mni152_tissue(
    out: Path, *, resolution: int = 1, threshold: float = 0.5, shots: int = 5, seed: int = 0
) -> None:
    """MNI152 2009a T1 template with grey matter (1), white matter (2) and other brain (3).

    Rule: inside nilearn's brain mask, a voxel is grey matter when its GM probability is >= ``threshold``,
    white matter when its WM probability is, and "other brain" otherwise (CSF, ventricles, partial volume;
    nilearn ships no CSF map). The two probabilities sum to at most 1, so with ``threshold >= 0.5`` no voxel
    qualifies for both. Outside the mask is background.
    """
    if resolution not in (1, 2):
        raise ValueError(f"resolution must be 1 or 2 (mm), got {resolution}")
    if not 0.5 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0.5, 1), got {threshold}")
    try:
        from nilearn import datasets as nl
    except ImportError:
        raise DataError(
            None, "mni152-tissue needs nilearn: pip install nilearn (or salt-seg[data])"
        ) from None
    t1 = nl.load_mni152_template(resolution=resolution)
    gm, wm = (
        nl.load_mni152_gm_template(resolution=resolution),
        nl.load_mni152_wm_template(resolution=resolution),
    )
    mask = nl.load_mni152_brain_mask(resolution=resolution)
    if not all(_same_grid(t1, x) for x in (gm, wm, mask)):
        raise DataError(None, "nilearn's MNI152 template and tissue maps are on different grids")
    image = _nifti_volume(t1, "mni152", "MR")
    p_gm, p_wm = (_nifti_volume(x, "p").data for x in (gm, wm))
    brain = _nifti_volume(mask, "mask").data > 0
    label = np.zeros(brain.shape, dtype=np.int16)
    label[brain] = 3
    label[brain & (p_gm >= threshold)] = 1
    label[brain & (p_wm >= threshold)] = 2
    classes = {1: "grey_matter", 2: "white_matter", 3: "other_brain"}
    write_nnunet_dataset(
        out,
        [("mni152", image, image.with_array(label, modality="label"))],
        classes=classes,
        channel_names=["T1"],
        name="mni152-tissue",
        extra={
            "description": "MNI152 2009a T1 template; GM/WM from nilearn probability maps "
            f"(p >= {threshold}); other brain = rest of the brain mask",
            "reference": "Fonov et al., NeuroImage 2011; nilearn.datasets.load_mni152_*",
            "licence": "MNI ICBM 2009 template licence (permissive, attribution); see card",
            "recipe": {"resolution": resolution, "threshold": threshold},
        },
    )
    _write_default_split(out, level="slice", shots=shots, seed=seed)


# --- colin27-aal ----------------------------------------------------------------------------------------------------------
def ensure_mricron_data(source: Path | None = None, *, install: bool = True) -> Path:
    """The folder holding ``ch2.nii.gz``, ``aal.nii.gz`` and ``aal.nii.txt``; installs Debian's
    ``mricron-data`` when missing, running as root and allowed to.

    Raises:
        DataError: the files are missing and cannot be installed here (the message says how to get them).
    """
    folder = Path(source) if source is not None else MRICRON_TEMPLATES
    needed = ("ch2.nii.gz", "aal.nii.gz", "aal.nii.txt")
    if all((folder / f).is_file() for f in needed):
        return folder
    how = (
        "install Debian/Ubuntu's mricron-data package (sudo apt-get install mricron-data), or pass --source "
        "DIR holding ch2.nii.gz, aal.nii.gz and aal.nii.txt from MRIcron's templates"
    )
    if source is not None:
        raise DataError(folder, f"missing {[f for f in needed if not (folder / f).is_file()]}; {how}")
    apt = shutil.which("apt-get")
    if not install or apt is None or os.geteuid() != 0:
        reason = "installation disabled" if not install else ("no apt-get" if apt is None else "not root")
        raise DataError(folder, f"Colin27/AAL templates not found ({reason}); {how}")
    logger.info("installing Debian package mricron-data (Colin27 + AAL templates)")
    for cmd in (
        [apt, "install", "-y", "-q", "mricron-data"],
        [apt, "update", "-q"],
        [apt, "install", "-y", "-q", "mricron-data"],
    ):
        done = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=900,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        if done.returncode == 0 and cmd[1] == "install" and all((folder / f).is_file() for f in needed):
            return folder
    raise DataError(folder, f"apt-get could not install mricron-data ({done.stderr.strip()[-200:]}); {how}")


def read_aal_names(path: Path) -> dict[str, int]:
    """AAL region name -> label value from ``aal.nii.txt`` (lines ``<value> <name> <code>``)."""
    names = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            names[parts[1]] = int(parts[0])
    if not names:
        raise DataError(path, "no '<value> <name>' lines found")
    return names


def build_colin27_aal(
    out: Path,
    *,
    source: str | Path | None = None,
    install: bool = True,
    merge_hemispheres: bool = False,
    shots: int = 5,
    seed: int = 0,
) -> None:
    """Colin27 T1 with six AAL structures, left and right apart (or merged with ``merge_hemispheres=True``).

    Left and right are separate classes by default because a box or point prompt asks for one object: a merged
    bilateral class would give boxes spanning both hemispheres. Both files are brought to RAS with
    :meth:`Volume.to_ras <salt_seg.data.volume.Volume.to_ras>` and must then share one grid.
    """

    folder = ensure_mricron_data(Path(source) if source else None, install=install)
    t1, aal = nib.load(str(folder / "ch2.nii.gz")), nib.load(str(folder / "aal.nii.gz"))
    image, atlas = _nifti_volume(t1, "colin27", "MR"), _nifti_volume(aal, "aal", label=True)
    if image.shape != atlas.shape or not np.allclose(image.affine, atlas.affine, atol=1e-3):
        raise DataError(folder, "ch2.nii.gz and aal.nii.gz are not on the same grid after canonicalisation")
    names = read_aal_names(folder / "aal.nii.txt")
    label = np.zeros(atlas.shape, dtype=np.int16)
    classes: dict[int, str] = {}
    for structure, regions in AAL_STRUCTURES.items():
        missing = [r for r in regions if r not in names]
        if missing:
            raise DataError(folder / "aal.nii.txt", f"AAL regions {missing} not listed")
        if merge_hemispheres:
            classes[len(classes) + 1] = structure
            label[np.isin(atlas.data, [names[r] for r in regions])] = len(classes)
        else:
            for region in regions:  # Hippocampus_L -> hippocampus_L
                classes[len(classes) + 1] = f"{structure}_{region[-1]}"
                label[atlas.data == names[region]] = len(classes)
    write_nnunet_dataset(
        out,
        [("colin27", image, image.with_array(label, modality="label"))],
        classes=classes,
        channel_names=["T1"],
        name="colin27-aal",
        extra={
            "description": "Colin27 single-subject T1 (with skull) and AAL deep grey matter and "
            "limbic structures" + (", L+R merged" if merge_hemispheres else ""),
            "reference": "Holmes et al., JCAT 1998; Tzourio-Mazoyer et al., NeuroImage 2002; "
            "Debian package mricron-data",
            "licence": "see /usr/share/doc/mricron-data/copyright and the card",
            "recipe": {"merge_hemispheres": merge_hemispheres},
        },
    )
    _write_default_split(out, level="slice", shots=shots, seed=seed)


# --- synthetic-shapes -----------------------------------------------------------------------------------------------------
def build_synthetic_shapes(
    out: Path,
    *,
    n_cases: int = 12,
    size: int = 96,
    depth: int = 48,
    spacing: tuple[float, float, float] = (1.0, 1.0, 2.0),
    shots: int = 2,
    seed: int = 0,
) -> None:
    """``n_cases`` seeded 3-D volumes of ellipsoids (1), cuboids (2) and cylinders (3)."""

    if n_cases < 4:
        raise ValueError(f"n_cases must be >= 4 (train, val and test need cases), got {n_cases}")
    rng = np.random.default_rng(seed)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-size * spacing[0] / 2, -size * spacing[1] / 2, -depth * spacing[2] / 2]

    def cases():
        for i in range(n_cases):
            img, lab = synthetic_3d((size, size, depth), n_objects=(2, 5), seed=rng)
            vol = Volume(img, affine, modality="image", name=f"shapes{i:03d}")
            yield f"shapes{i:03d}", vol, vol.with_array(lab, modality="label")

    write_nnunet_dataset(
        out,
        cases(),
        classes={i + 1: k for i, k in enumerate(SHAPES_3D)},
        channel_names=["synthetic"],
        name="synthetic-shapes",
        extra={
            "description": "seeded synthetic 3-D shapes with texture and noise",
            "licence": "generated; no restrictions",
            "recipe": {"seed": seed, "n_cases": n_cases},
        },
    )
    _write_default_split(out, level="volume", shots=shots, seed=seed)


def _write_default_split(out: Path, *, level: str, shots: int, seed: int) -> None:

    ds = load_dataset(out, "nnunet")
    if level == "volume":
        split = make_split(ds, shots=shots, seed=seed, level="volume", val=0.2, test=0.3)
    else:
        split = make_split(
            ds, shots=shots, seed=seed, level="slice", val=0.2, test=0.4, guard_mm=10.0, axis=2
        )
    save_split(split, out / "split.json")


#: recipe name -> recipe.
RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            "mni152-tissue",
            "MNI152 T1 template, grey/white matter/other brain (nilearn)",
            build_mni152_tissue,
        ),
        Recipe(
            "colin27-aal",
            "Colin27 T1 + six AAL deep grey/limbic structures (mricron-data)",
            build_colin27_aal,
        ),
        Recipe("synthetic-shapes", "seeded synthetic 3-D shapes", build_synthetic_shapes),
    )
}


def prepare_dataset(name: str, out: str | Path, *, force: bool = False, **options: Any) -> Path:
    """Build dataset ``name`` at ``out``: in a temporary sibling folder, validated, then renamed into place.

    Args:
        name: a key of :data:`RECIPES`.
        out: the dataset folder to create.
        force: replace an existing ``out``.
        options: recipe keyword arguments (e.g. ``seed``, ``shots``, ``source``).

    Raises:
        ValueError: unknown recipe (the valid names are listed) or a bad option.
        FileExistsError: ``out`` exists and ``force`` is off.
        DataError: the recipe's sources are missing or fail validation. Nothing is left behind on failure.
    """

    if name not in RECIPES:
        raise ValueError(f"unknown dataset recipe {name!r}; valid: {sorted(RECIPES)}")
    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out}: already exists; choose another --out or pass --force to replace it")
    with atomic_folder(out) as tmp:  # built and checked aside, renamed into place; on failure nothing is left
        RECIPES[name].build(tmp, **options)
        report = check_dataset(load_dataset(tmp, "nnunet"))
        if not report.ok:
            raise DataError(out, f"built dataset fails its check: {report.problems[0]}")
    logger.info("prepared %s at %s", name, out)
    return out
