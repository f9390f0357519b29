"""salt_seg's MONAI Label infer tasks: clicks and boxes from 3D Slicer / OHIF -> salt_seg's own predict path.

Both tasks hand the image to :func:`salt_seg.inference.batch.predict_case` (exactly what ``salt-seg predict`` runs:
read, RAS-prepare, segment slice by slice, write the label map in the image's own geometry) and return the label
file it wrote. Nothing of the inference is repeated here; this module only turns MONAI Label requests into
salt_seg prompts.

Request parameters (the JSON ``params`` of ``POST /infer/{model}?image=ID``); voxel indices ``[i, j, k]`` of the
image as stored, which is what Slicer's MONAI Label module sends (RAS -> IJK of the volume node):

``foreground`` / ``background``
    positive / negative clicks of one object (DeepGrow form; ``label`` names its class, default the first);
``<class name>`` (one per model label) and ``background``
    DeepEdit's multi-label form: each class's positive clicks; the ``background`` clicks are negative for all;
``roi``
    a box ``[i0, i1, j0, j1, k0, k1]`` (Slicer's ROI): the box prompt on every model slice it spans, with the
    clicks of those slices added, for the class ``label`` names.

Clicks without a box are propagated from their slices through the neighbouring ones (``salt-seg predict --mode
propagate``); a box gives ``--mode prompts`` on each slice inside it. The model's slices are those of
:func:`salt_seg.inference.coords.source_axis`; a click's slice is its index along that axis.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

log = logging.getLogger(__name__)

#: the module pydicom 3.0 removed; pydicom-seg 0.4.1 (monailabel's DICOM-SEG converter) still imports it
PYDICOM_REMOVED_MODULE = "pydicom._storage_sopclass_uids"


def allow_pydicom_seg_on_pydicom3() -> None:
    """Let pydicom-seg 0.4.1 import under pydicom 3 (call before importing ``monailabel.interfaces.app``).

    pydicom-seg reads ``SegmentationStorage`` from ``pydicom._storage_sopclass_uids``, a module pydicom 2.3
    deprecated and 3.0 removed in favour of ``pydicom.uid``, which holds the same UIDs (razorx89/pydicom-seg#60,
    Project-MONAI/MONAILabel#1841). monailabel 0.8.5 imports pydicom-seg at module level, so without this its
    server does not start next to highdicom's pydicom 3. Nothing happens under pydicom 2.
    """
    import pydicom

    if PYDICOM_REMOVED_MODULE in sys.modules or int(pydicom.__version__.split(".")[0]) < 3:
        return
    import pydicom.uid

    sys.modules[PYDICOM_REMOVED_MODULE] = pydicom.uid


def load_model(run: str | None, checkpoint: str | None, variant: str | None, device: str) -> Any:
    """The model ``salt-seg predict`` would load for ``--model run`` / ``--checkpoint`` (a ``LoadedModel``)."""
    from salt_seg.commands.common import resolve_device
    from salt_seg.inference import LoadedModel, load_base_for_prompts, load_inference_model

    dev = resolve_device(device)
    if run:
        return load_inference_model(run, variant, checkpoint, dev)
    base, record = load_base_for_prompts(checkpoint or "builtin", variant, dev, intensity="minmax")
    return LoadedModel(base, record, dict(record.classes), {"base_checkpoint": checkpoint or "builtin"})


def _voxel(p: Any, what: str) -> tuple[int, int, int]:
    if not isinstance(p, (list, tuple)) or len(p) < 3:
        raise ValueError(f"{what}: a click is [i, j, k] voxel indices, got {p!r}")
    return int(round(float(p[0]))), int(round(float(p[1]))), int(round(float(p[2])))


def parse_clicks(request: dict[str, Any], class_names: dict[int, str]) -> tuple[dict[int, list], list, int]:
    """``request`` -> (class id -> positive clicks, negative clicks, the class a box belongs to).

    Raises:
        ValueError: a click that is not ``[i, j, k]``, or a ``label`` that is not one of the model's classes.
    """
    by_name = {name: cid for cid, name in class_names.items()}
    first = min(class_names)
    label = request.get("label")
    if label not in (None, "") and str(label) not in by_name and len(class_names) > 1:
        raise ValueError(f"label {label!r} is not one of the model's classes {sorted(by_name)}")
    current = by_name.get(str(label), first) if label not in (None, "") else first
    positive: dict[int, list] = {}
    if request.get("foreground"):
        positive[current] = [_voxel(p, "foreground") for p in request["foreground"]]
    for name, cid in by_name.items():
        if name != "background" and request.get(name):
            positive.setdefault(cid, []).extend(_voxel(p, name) for p in request[name])
    negative = [_voxel(p, "background") for p in request.get("background") or []]
    return positive, negative, current


def parse_roi(roi: Any) -> tuple[tuple[int, int, int], tuple[int, int, int]] | None:
    """Slicer's ``roi`` ``[i0, i1, j0, j1, k0, k1]`` -> (low corner, high corner), inclusive; ``None`` if absent.

    Raises:
        ValueError: not six numbers.
    """
    if roi is None or (isinstance(roi, (list, tuple)) and len(roi) == 0):
        return None
    if not isinstance(roi, (list, tuple)) or len(roi) != 6:
        raise ValueError(f"roi: a box is [i0, i1, j0, j1, k0, k1] voxel indices, got {roi!r}")
    v = [int(round(float(x))) for x in roi]
    lo = (min(v[0], v[1]), min(v[2], v[3]), min(v[4], v[5]))
    hi = (max(v[0], v[1]), max(v[2], v[3]), max(v[4], v[5]))
    return lo, hi


def request_prompts(
    positive: dict[int, list],
    negative: list,
    roi: tuple[tuple[int, int, int], tuple[int, int, int]] | None,
    roi_class: int,
    shape: tuple[int, ...],
    axis: int,
) -> tuple[list[Any], list[tuple[int, int, int]]]:
    """Clicks and a box in source voxels -> salt_seg prompts (source voxel coordinates) on slices along ``axis``.

    Returns:
        The prompts, and the clicks no prompt could use (negative clicks on a slice without a positive one).

    Raises:
        ValueError: a click or box outside the image, or nothing to prompt with.
    """
    from salt_seg.prompts import Prompt, plane_axes

    u, v = plane_axes(axis)
    for pts in [*positive.values(), negative]:
        for p in pts:
            if not all(0 <= p[d] < shape[d] for d in range(3)):
                raise ValueError(f"click {list(p)} lies outside the image (shape {list(shape[:3])})")
    unused: list[tuple[int, int, int]] = []
    prompts: list[Prompt] = []
    if roi is not None:
        lo = [max(0, lo) for lo in roi[0]]
        hi = [min(int(shape[d]) - 1, roi[1][d]) for d in range(3)]
        if any(lo[d] > hi[d] for d in range(3)):
            raise ValueError(
                f"roi {list(roi[0])}..{list(roi[1])} lies outside the image (shape {list(shape[:3])})"
            )
        box = (float(lo[u]), float(lo[v]), float(hi[u]), float(hi[v]))
        clicks = [(p, 1) for p in positive.get(roi_class, [])] + [(p, 0) for p in negative]
        for s in range(lo[axis], hi[axis] + 1):
            here = [(p, lab) for p, lab in clicks if p[axis] == s]
            prompts.append(
                Prompt(
                    points=[(p[u], p[v]) for p, _ in here],
                    point_labels=[lab for _, lab in here],
                    box=box,
                    class_id=roi_class,
                    slice_index=s,
                    axis=axis,
                )
            )
        unused = [p for p, _ in clicks if not lo[axis] <= p[axis] <= hi[axis]]
        unused += [p for cid, pts in positive.items() if cid != roi_class for p in pts]
        return prompts, unused
    used_negative: set[tuple[int, int, int]] = set()
    for cid in sorted(positive):
        for s in sorted({p[axis] for p in positive[cid]}):
            pos = [p for p in positive[cid] if p[axis] == s]
            neg = [p for p in negative if p[axis] == s]
            used_negative.update(neg)
            prompts.append(
                Prompt(
                    points=[(p[u], p[v]) for p in pos + neg],
                    point_labels=[1] * len(pos) + [0] * len(neg),
                    class_id=cid,
                    slice_index=s,
                    axis=axis,
                )
            )
    unused = [p for p in negative if p not in used_negative]
    if not prompts:
        raise ValueError("give foreground clicks or a box (roi): there is nothing to segment from")
    return prompts, unused


class SaltSegInfer(InferTask):
    """A salt_seg model as a MONAI Label infer task (``interactive``: clicks / box; otherwise class tokens).

    Args:
        loaded: the model (:func:`load_model`), shared by the app's tasks.
        interactive: clicks and boxes (DeepEdit type) or automatic segmentation with the learned class tokens.
        description: shown by ``GET /info``.
        batch_size: slices per image-encoder call.
        lock: serialises inference on the shared model (requests arrive on several threads).
    """

    def __init__(
        self,
        loaded: Any,
        interactive: bool,
        description: str,
        batch_size: int = 8,
        lock: threading.Lock | None = None,
    ) -> None:
        names = dict(loaded.class_names)
        labels = {name: int(cid) for cid, name in sorted(names.items())}
        if interactive:
            labels["background"] = 0  # DeepEdit's convention: the background's clicks are the negative ones
        super().__init__(
            type=InferType.DEEPEDIT if interactive else InferType.SEGMENTATION,
            labels=labels,
            dimension=3,
            description=description,
            config={"batch_size": int(batch_size)},
        )
        self.loaded = loaded
        self.interactive = interactive
        self.batch_size = int(batch_size)
        self.lock = lock or threading.Lock()

    def is_valid(self) -> bool:
        return True

    def __call__(self, request: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        """Segment ``request["image"]``; bad input (clicks outside the image, an unknown label, an unreadable
        image) answers HTTP 400 with the one-line reason instead of a bare 500."""
        from fastapi import HTTPException

        from salt_seg.data.errors import DataError

        try:
            return self._infer(request)
        except (ValueError, FileNotFoundError, DataError) as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.error("salt_seg: %s", msg)
            raise HTTPException(status_code=400, detail=msg) from None

    def _infer(self, request: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        from salt_seg.inference.batch import PredictOptions, find_cases, predict_case
        from salt_seg.inference.coords import source_axis

        t0 = time.perf_counter()
        image = Path(str(request["image"]))
        case = find_cases(image)[0]
        names = dict(self.loaded.class_names)
        report: dict[str, Any] = {}
        prompts_for = None
        if self.interactive:
            positive, negative, roi_class = parse_clicks(request, names)
            roi = parse_roi(request.get("roi"))
            mode = "prompts" if roi is not None else "propagate"

            def prompts_for(prepared: Any) -> list[Any]:
                axis = source_axis(prepared)
                prompts, unused = request_prompts(
                    positive, negative, roi, roi_class, tuple(prepared.source.shape), axis
                )
                report.update(
                    slice_axis=axis, n_prompts=len(prompts), unused_clicks=[list(p) for p in unused]
                )
                return prompts

        else:
            mode = "auto"
        options = PredictOptions(
            mode=mode,
            overwrite=True,
            progress=False,
            batch_size=int(request.get("batch_size", self.batch_size)),
        )
        out = Path(tempfile.mkdtemp(prefix="salt_seg_monailabel_"))
        try:
            with self.lock:
                summary = predict_case(self.loaded, case, out, options, prompts_for=prompts_for)
            # the label map alone leaves the folder (MONAI Label deletes the file once it is sent)
            fd, label_file = tempfile.mkstemp(prefix=f"{case.name}_", suffix=".nii.gz")
            os.close(fd)
            shutil.move(case.outputs(out, False)["label_map"], label_file)
        finally:
            shutil.rmtree(out, ignore_errors=True)
        present = {int(k) for k, s in summary.get("structures", {}).items() if int(s.get("voxels", 0)) > 0}
        result = {
            "label_names": {name: int(cid) for cid, name in sorted(names.items())},
            "mode": mode,
            "structures": {
                names[int(k)]: {"voxels": int(s["voxels"]), "volume_ml": s["volume_ml"]}
                for k, s in summary.get("structures", {}).items()
            },
            "present": sorted(present),
            "latency_s": round(time.perf_counter() - t0, 3),
            **report,
        }
        log.info("salt_seg %s on %s: %s", mode, case.name, result)
        return str(label_file), result
