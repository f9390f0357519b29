"""Predicting cases: one file, DICOM folder or zip, or a folder of them; failures isolated; sharded by rank.

Output folder layout::

    OUT/
      <case>.nii.gz                 label map, source geometry (uint8/uint16)
      <case>.json                   label names + colours + the case summary (volumes in mL, slices, confidence)
      <case>_probabilities.nii.gz   with --probabilities: x, y, z, class (uint8, scl_slope 1/255)
      labels.ctbl                   3D Slicer colour table
      labels_itksnap.txt            ITK-SNAP label description file
      predict_summary.json          every case: ok (with its summary) or failed (with the error)

``<case>`` follows nnU-Net: ``case_0000.nii.gz`` (with ``case_0001``... as further channels) writes
``case.nii.gz``, the name of its ground truth in ``labelsTr``.

A case that fails (unreadable file, bad prompts, ...) is logged, listed under ``failed`` and skipped; the others
finish. The folder-level files belong with label maps: when no case succeeded none is written (and an output
folder this run created is removed again). A refusal of the file system (read-only, disk full) stops the batch:
every later case would fail the same way. Nothing existing is replaced without ``overwrite`` -- the check runs
for every output before any work. Under ``torchrun`` each rank takes cases ``rank, rank + world, ...``; rank 0
gathers the results and writes the folder-level files.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

from salt_seg.data import load_volume, prepare_volume
from salt_seg.data.errors import DataError, storage_error
from salt_seg.data.readers import file_kind, load_channels, strip_suffix
from salt_seg.inference.coords import prompts_to_prepared, source_axis
from salt_seg.inference.loading import LoadedModel
from salt_seg.inference.outputs import algorithm_record, case_outputs, check_dicom_seg_source, export_case
from salt_seg.inference.segment import MODES, InferenceSettings, segment_volume
from salt_seg.inference.sidecars import write_itksnap_labels, write_slicer_ctbl
from salt_seg.io import atomic_write_json
from salt_seg.prompts import load_prompts

if TYPE_CHECKING:
    from salt_seg.data.pipeline import PreparedVolume
    from salt_seg.prompts import Prompt

log = logging.getLogger(__name__)

SUMMARY_NAME = "predict_summary.json"
CTBL_NAME = "labels.ctbl"
ITKSNAP_NAME = "labels_itksnap.txt"
CASE_KINDS = ("nifti", "itk", "picture", "dicom", "zip")


@dataclass
class InputCase:
    """One input case.

    Attributes:
        name: output stem (file name without its image suffix and nnU-Net channel number, or the folder name).
        path: the image file (the first channel file), DICOM folder or zip.
        prompts: its prompt file (``prompts``/``propagate`` modes).
        channels: an nnU-Net case's channel files in channel order (empty for a single image).
    """

    name: str
    path: Path
    prompts: Path | None = None
    channels: list[Path] = field(default_factory=list)

    def load(self):  # -> Volume
        """The case's volume: its image, or its nnU-Net channel files stacked (``_0000``, ``_0001``, ...)."""

        return load_channels(self.channels) if len(self.channels) > 1 else load_volume(self.path)

    def outputs(self, out_dir: Path, probabilities: bool, fmt: str = "nifti") -> dict[str, Path]:
        """The files this case writes (:func:`~salt_seg.inference.outputs.case_outputs`)."""

        return case_outputs(out_dir, self.name, probabilities, fmt)


@dataclass
class PredictOptions:
    """How to predict (everything but the model and the cases).

    Attributes:
        mode: ``auto``, ``prompts`` or ``propagate``.
        probabilities: also write probability maps.
        overwrite: replace existing outputs.
        batch_size: slices per image-encoder call.
        settings: thresholds.
        format: ``nifti`` (default), or also ``<case>.seg.dcm`` (``dicom-seg``, a DICOM Segmentation) or
            ``<case>.rtstruct.dcm`` (``rtstruct``, an RT Structure Set) of the source series (DICOM inputs only).
        progress: tqdm progress bars.
        precision: ``fp32``, ``bf16`` or ``fp16`` autocast (:mod:`salt_seg.model.precision`).
    """

    mode: str = "auto"
    probabilities: bool = False
    overwrite: bool = False
    batch_size: int = 8
    settings: InferenceSettings = field(default_factory=InferenceSettings)
    format: str = "nifti"
    progress: bool = True
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode: {self.mode!r} is not one of {list(MODES)}")
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.format not in ("nifti", "dicom-seg", "rtstruct"):
            raise ValueError(f"format: {self.format!r} is not one of nifti, dicom-seg, rtstruct")


def _has_dicom(folder: Path) -> bool:

    for f in folder.iterdir():
        if f.is_file() and not f.name.startswith("."):
            try:
                if file_kind(f) == "dicom":
                    return True
            except Exception:  # noqa: BLE001 - unsupported files are simply not DICOM
                continue
    return False


def find_cases(input_path: str | Path, *, exclude: Path | None = None) -> list[InputCase]:
    """The cases under ``input_path``: a single image file / DICOM folder / zip, or a folder of them.

    A folder holding DICOM files directly is one series; otherwise each supported image file and each non-empty
    subfolder (a DICOM series) is a case. Hidden entries and ``exclude`` (the output folder) are skipped. nnU-Net
    channel files are named as nnU-Net does: ``case_0000.nii.gz`` is case ``case`` (written ``case.nii.gz``, so
    ``evaluate --gt labelsTr`` pairs it), and ``case_0000``/``case_0001`` are one two-channel case
    (:func:`_group_channels`).

    Raises:
        FileNotFoundError: ``input_path`` does not exist.
        ValueError: a folder with no case in it, or two cases that would write the same output name.
    """

    p = Path(input_path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such input file or folder")
    if p.is_file():
        base, num = _channel_of(strip_suffix(p.name))
        return [InputCase(base if num == 0 else strip_suffix(p.name), p)]
    if _has_dicom(p):
        return [InputCase(p.name, p)]
    cases = []
    skip = exclude.resolve() if exclude is not None else None
    for child in sorted(p.iterdir()):
        if child.name.startswith(".") or (skip is not None and child.resolve() == skip):
            continue
        if child.is_dir():
            if any(f.is_file() and not f.name.startswith(".") for f in child.rglob("*")):
                cases.append(InputCase(child.name, child))
            continue
        try:
            kind = file_kind(child)
        except DataError:
            log.info("skipping %s (not an image)", child)
            continue
        if kind in CASE_KINDS:
            cases.append(InputCase(strip_suffix(child.name), child))
    if not cases:
        raise ValueError(f"{p}: no images found (NIfTI, DICOM folders, zips, NRRD/MHA)")
    cases = _group_channels(cases, _declared_channels(p))
    seen: dict[str, Path] = {}
    for c in cases:
        if c.name in seen:
            raise ValueError(f"{c.path} and {seen[c.name]} would both write {c.name}.nii.gz; rename one")
        seen[c.name] = c.path
    return cases


_CHANNEL = re.compile(r"^(.+)_(\d{4})$")


def _channel_of(stem: str) -> tuple[str, int | None]:
    """``("case", 1)`` for nnU-Net's ``case_0001``; ``(stem, None)`` for other names."""
    m = _CHANNEL.match(stem)
    return (m.group(1), int(m.group(2))) if m else (stem, None)


def _declared_channels(folder: Path) -> int | None:
    """The channel count a ``dataset.json`` in ``folder`` or its parent declares (nnU-Net ``imagesTs``)."""

    for cand in (folder / "dataset.json", folder.parent / "dataset.json"):
        if cand.is_file():
            try:
                doc = json.loads(cand.read_text())
                names = doc.get("channel_names") or doc.get("modality")
            except (OSError, ValueError, AttributeError):
                return None  # the dataset's own readers report a bad dataset.json; here it is only a hint
            return len(names) if isinstance(names, dict) and names else None
    return None


def _group_channels(cases: list[InputCase], declared: int | None) -> list[InputCase]:
    """Follow nnU-Net's naming: ``case_0000`` (and ``case_0001``, ...) are one case named ``case``.

    Files are grouped only when every image file of the folder carries a channel number and each case holds the
    same channels ``0..N-1``; with N > 1 also only when a ``dataset.json`` declares N channels or several cases
    agree (``scan_0000``, ``scan_0001`` alone may as well be two scans). Otherwise names stay as they are.
    """
    files = [c for c in cases if c.path.is_file()]
    parts = [_channel_of(c.name) for c in files]
    if not files or len(files) != len(cases) or any(num is None for _, num in parts):
        return cases
    by_base: dict[str, dict[int, Path]] = {}
    for c, (base, num) in zip(files, parts, strict=True):
        by_base.setdefault(base, {})[int(num)] = c.path  # type: ignore[arg-type]
    sets = {tuple(sorted(ch)) for ch in by_base.values()}
    if len(sets) != 1:
        return cases
    numbers = next(iter(sets))
    n = len(numbers)
    if numbers != tuple(range(n)) or (n > 1 and declared != n and len(by_base) < 2):
        if n > 1:
            log.warning("channel-numbered files whose grouping is unclear; each file is a case of its own")
        return cases
    return [
        InputCase(base, ch[0], channels=[ch[i] for i in range(n)] if n > 1 else [])
        for base, ch in by_base.items()
    ]


def attach_prompts(cases: list[InputCase], prompts: str | Path | None) -> None:
    """Give each case its prompt file: one file for a single case, or ``<case>.json`` in a folder.

    Raises:
        FileNotFoundError: ``prompts`` does not exist.
        ValueError: one prompt file for several cases.
    """
    if prompts is None:
        return
    p = Path(prompts)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such prompt file or folder")
    if p.is_file():
        if len(cases) != 1:
            raise ValueError(
                f"{p}: one prompt file for {len(cases)} cases; give a folder holding <case>.json per case"
            )
        cases[0].prompts = p
        return
    for c in cases:
        f = p / f"{c.name}.json"
        c.prompts = f if f.is_file() else None


def check_outputs(cases: list[InputCase], out_dir: Path, options: PredictOptions) -> None:
    """Refuse before any work if an output exists and ``overwrite`` is off.

    Raises:
        FileExistsError: names the first existing output.
    """
    if options.overwrite:
        return
    files = [out_dir / SUMMARY_NAME, out_dir / CTBL_NAME, out_dir / ITKSNAP_NAME]
    for c in cases:
        files += list(c.outputs(out_dir, options.probabilities, options.format).values())
    for f in files:
        if f.exists():
            raise FileExistsError(f"{f}: exists; pass --force to replace outputs in {out_dir}")


def _geometry_summary(prepared: Any) -> dict[str, Any]:

    g = prepared.source
    return {
        "shape": list(g.shape),
        "spacing_mm": [round(float(s), 6) for s in np.linalg.norm(np.asarray(g.affine)[:3, :3], axis=0)],
        "orientation": "".join(nib.aff2axcodes(g.affine)),
        "affine": np.round(np.asarray(g.affine), 6).tolist(),
    }


def predict_case(
    loaded: LoadedModel,
    case: InputCase,
    out_dir: Path,
    options: PredictOptions,
    *,
    prompts_for: Callable[[PreparedVolume], list[Prompt]] | None = None,
) -> dict[str, Any]:
    """Segment one case and write its outputs; returns its summary (``status: ok``).

    Args:
        loaded: the model.
        case: the input.
        out_dir: the output folder.
        options: how to predict.
        prompts_for: ``prompts``/``propagate`` modes: gives the prompts (source voxel coordinates, as a prompt file
            holds them) from the prepared volume, instead of reading ``case.prompts`` -- for callers whose prompts
            arrive as voxel clicks (the MONAI Label app), which need the model's slicing axis to place them.

    Raises:
        Any error of reading, prompting or writing (the batch runner records it as a failed case).
    """

    t0 = time.perf_counter()
    model, record, names, meta = loaded
    volume = case.load()
    if options.format != "nifti":  # before any work: the output needs the DICOM series the case was read from
        check_dicom_seg_source(case.path, volume.meta.get("format"))
    prepared = prepare_volume(volume, record)
    prompts = None
    if options.mode != "auto":
        if prompts_for is not None:
            raw = prompts_for(prepared)
        elif case.prompts is None:
            raise ValueError(f"{case.name}: mode {options.mode!r} needs a prompt file ({case.name}.json)")
        else:
            raw, _ = load_prompts(
                case.prompts, affine=prepared.source.affine, default_axis=source_axis(prepared)
            )
        try:
            prompts = prompts_to_prepared(raw, prepared)
        except ValueError as exc:
            raise ValueError(f"{case.prompts or case.name}: {exc}") from None
    result = segment_volume(
        model,
        record,
        prepared,
        prompts,
        options.mode,
        settings=options.settings,
        batch_size=options.batch_size,
        probabilities=options.probabilities,
        class_names=names,
        progress=options.progress,
        desc=case.name,
        precision=options.precision,
    )
    extra = {
        "case": case.name,
        "input": str(case.path),
        "prompts": str(case.prompts) if case.prompts else None,
        "model": meta.get("adapter_path"),
        "status": "ok",
        "geometry": _geometry_summary(prepared),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    _, summary = export_case(
        out_dir,
        case.name,
        result,
        prepared,
        source_path=case.path,
        probabilities=options.probabilities,
        overwrite=options.overwrite,
        extra=extra,
        fmt=options.format,
        algorithm=algorithm_record(meta),
    )
    return summary


@dataclass
class BatchReport:
    """Everything a batch did (rank 0 has every rank's cases).

    Attributes:
        ok: summaries of finished cases.
        failed: ``{"case", "input", "error"}`` of failed cases.
        summary_path: the written ``predict_summary.json`` (rank 0, at least one case ok), else ``None``.
    """

    ok: list[dict[str, Any]]
    failed: list[dict[str, Any]]
    summary_path: Path | None = None

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def predict_cases(
    loaded: LoadedModel,
    cases: list[InputCase],
    out_dir: str | Path,
    options: PredictOptions,
    *,
    rank: int = 0,
    world_size: int = 1,
    gather: Any = None,
    barrier: Any = None,
) -> BatchReport:
    """Run :func:`predict_case` over this rank's share of ``cases``, isolating failures, then summarise.

    Args:
        loaded: the model (:func:`~salt_seg.inference.loading.load_inference_model`).
        cases: all cases (every rank passes the same list).
        out_dir: the output folder.
        options: how to predict.
        rank: this process's rank; it takes ``cases[rank::world_size]``.
        world_size: number of processes.
        gather: ``f(obj) -> list`` of every rank's ``obj`` (``torch.distributed`` all-gather); identity if None.
        barrier: ``f()`` synchronising ranks after the output check.

    Returns:
        The :class:`BatchReport` (every rank's cases, in input order).

    Raises:
        FileExistsError: an output exists and ``options.overwrite`` is off (before any work).
    """

    out = Path(out_dir)
    check_outputs(cases, out, options)
    if barrier is not None:
        barrier()
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    mine = cases[rank::world_size]
    ok: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    bar = tqdm(
        mine,
        desc="cases" if world_size == 1 else f"cases[rank {rank}]",
        unit="case",
        disable=not options.progress or len(mine) < 2,
        dynamic_ncols=True,
    )
    for case in bar:
        try:
            ok.append(predict_case(loaded, case, out, options))
        except Exception as exc:  # noqa: BLE001 - one bad case must not stop the batch
            if world_size == 1 and storage_error(exc) is not None:
                _remove_if_empty(out, created)
                raise
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.error("%s: failed: %s", case.name, msg)
            log.debug("traceback of %s", case.name, exc_info=True)
            failed.append(
                {
                    "case": case.name,
                    "input": str(case.path),
                    "status": "failed",
                    "error": f"{type(exc).__name__}: {msg}",
                }
            )
    parts = gather((ok, failed)) if gather is not None else [(ok, failed)]
    order = {c.name: i for i, c in enumerate(cases)}
    all_ok = sorted((s for o, _ in parts for s in o), key=lambda s: order[s["case"]])
    all_failed = sorted((f for _, fl in parts for f in fl), key=lambda f: order[f["case"]])
    report = BatchReport(all_ok, all_failed)
    if rank == 0 and not all_ok:
        _remove_if_empty(out, created)
    elif rank == 0:
        _, _, names, meta = loaded
        write_slicer_ctbl(out / CTBL_NAME, names, overwrite=True)
        write_itksnap_labels(out / ITKSNAP_NAME, names, overwrite=True)
        doc = {
            "model": meta.get("adapter_path"),
            "base_checkpoint": meta.get("base_checkpoint"),
            "mode": options.mode,
            "settings": options.settings.to_dict(),
            "labels": {"0": "background", **{str(k): v for k, v in names.items()}},
            "n_cases": len(cases),
            "n_ok": len(all_ok),
            "n_failed": len(all_failed),
            "world_size": world_size,
            "ok": [_short(s) for s in all_ok],
            "failed": all_failed,
        }
        report.summary_path = out / SUMMARY_NAME
        atomic_write_json(report.summary_path, doc, default=str)
    return report


def _remove_if_empty(out: Path, created: bool) -> None:
    """Take back an output folder this run created when nothing was written into it."""
    if created and out.is_dir() and not any(out.iterdir()):
        out.rmdir()


def _short(s: dict[str, Any]) -> dict[str, Any]:
    """A case summary without the per-slice details (those stay in ``<case>.json``)."""
    keep = ("case", "input", "status", "outputs", "seconds")
    out = {k: s[k] for k in keep if k in s}
    out["structures"] = {
        k: {
            "name": v["name"],
            "voxels": v["voxels"],
            "volume_ml": v["volume_ml"],
        }
        for k, v in s["structures"].items()
    }
    return out
