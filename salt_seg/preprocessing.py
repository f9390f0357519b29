"""The preprocessing record: the single source of truth for how a slice becomes model input.

Train, predict and the viewer all call :func:`prepare_slice` with the record saved next to the adapter, so the
three can never disagree. The record is a small dataclass that round-trips through JSON (it is stored in every
adapter file's metadata).

Pipeline for one 2-D slice (any dtype) of shape ``H x W``:

1. intensity to ``[0, 1]``: CT window (level/width in HU), MR percentile clip, or plain min-max;
2. resize: longest side to ``image_size`` keeping aspect and pad bottom/right (SAM), or squash to a square
   (MedSAM);
3. scaling: SAM's ``0..255`` followed by ImageNet mean/std, or MedSAM's ``[0, 1]`` with no mean/std;
4. the single channel is repeated onto SAM's three input channels.

:class:`SliceTransform` remembers the geometry so prompts map into the input and logits map back.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # torch is imported lazily so the CLI stays fast
    import torch

RECORD_VERSION = 1

#: CT window presets (level, width) in Hounsfield units.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "soft_tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}

INTENSITY_MODES = ("ct", "mr", "minmax", "none")
INPUT_SCALINGS = ("sam", "medsam")
RESIZE_MODES = ("longest", "square")
PROMPT_MODES = ("box", "points", "auto", "mixed")

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


def window_preset(name: str) -> tuple[float, float]:
    """(level, width) of a named CT window preset.

    Raises:
        ValueError: unknown preset name (the message lists the valid ones).
    """
    try:
        return WINDOW_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown window preset {name!r}; valid: {sorted(WINDOW_PRESETS)}") from None


@dataclass
class Preprocessing:
    """How images are turned into model input; saved with every trained adapter.

    Attributes:
        intensity: ``ct`` (window in HU), ``mr`` (percentile clip), ``minmax`` or ``none`` (already in [0, 1]).
        window_level: CT window level in HU (``intensity == "ct"``).
        window_width: CT window width in HU (``intensity == "ct"``).
        percentiles: lower/upper percentile for ``intensity == "mr"``.
        input_scaling: ``sam`` (0-255 + ImageNet mean/std) or ``medsam`` ([0, 1], no mean/std).
        resize: ``longest`` (longest side + pad, SAM) or ``square`` (squash, MedSAM).
        axis: volume axis slices are taken along, in the canonical orientation (2 = axial for RAS).
        orientation: canonical orientation volumes are brought to before slicing.
        image_size: side of the square model input in pixels.
        spacing: in-plane target spacing in mm for resampling, or ``None`` to keep the native grid.
        channels: source channels mapped onto SAM's three inputs (one channel is repeated three times).
        classes: label id -> name (background 0 is implicit).
        prompt_mode: ``box``, ``points``, ``auto`` (learned class tokens) or ``mixed``.
        version: the record's format version (:data:`RECORD_VERSION`); a newer one is refused.

    Build one from a mapping (a config section, an adapter file's JSON) with :func:`salt_seg.configio.from_dict`.
    """

    intensity: str = "minmax"
    window_level: float = 40.0
    window_width: float = 400.0
    percentiles: tuple[float, float] = (0.5, 99.5)
    input_scaling: str = "sam"
    resize: str = "longest"
    axis: int = 2
    orientation: str = "RAS"
    image_size: int = 1024
    spacing: float | None = None
    channels: list[int] = field(default_factory=lambda: [0])
    classes: dict[int, str] = field(default_factory=lambda: {1: "foreground"})
    prompt_mode: str = "box"
    version: int = RECORD_VERSION

    def __post_init__(self) -> None:
        if self.version > RECORD_VERSION:
            raise ValueError(
                f"preprocessing record version {self.version} is newer than this salt_seg ({RECORD_VERSION})"
            )
        for name, allowed in (
            ("intensity", INTENSITY_MODES),
            ("input_scaling", INPUT_SCALINGS),
            ("resize", RESIZE_MODES),
            ("prompt_mode", PROMPT_MODES),
            ("orientation", ("RAS",)),  # the volume pipeline reorients to RAS only
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"Preprocessing.{name}: {getattr(self, name)!r} is not one of {list(allowed)}"
                )
        if self.window_width <= 0:
            raise ValueError(f"Preprocessing.window_width must be > 0, got {self.window_width}")
        lo, hi = (float(v) for v in self.percentiles)
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(
                f"Preprocessing.percentiles must satisfy 0 <= lo < hi <= 100, got {self.percentiles}"
            )
        self.percentiles = (lo, hi)
        if int(self.axis) not in (0, 1, 2):
            raise ValueError(f"Preprocessing.axis must be 0, 1 or 2, got {self.axis}")
        self.axis = int(self.axis)
        if int(self.image_size) < 32 or int(self.image_size) % 16:
            raise ValueError(
                f"Preprocessing.image_size must be a multiple of 16 and >= 32, got {self.image_size}"
            )
        self.image_size = int(self.image_size)
        if self.spacing is not None and float(self.spacing) <= 0:
            raise ValueError(f"Preprocessing.spacing must be > 0 mm or null, got {self.spacing}")
        if not self.channels or len(self.channels) > 3:
            raise ValueError(f"Preprocessing.channels must list 1 to 3 source channels, got {self.channels}")
        self.channels = [int(c) for c in self.channels]
        classes = {int(k): str(v) for k, v in dict(self.classes).items()}
        if not classes or min(classes) < 1:
            raise ValueError(f"Preprocessing.classes must map ids >= 1 to names, got {self.classes}")
        self.classes = dict(sorted(classes.items()))

    @property
    def class_ids(self) -> list[int]:
        return list(self.classes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["percentiles"] = list(self.percentiles)
        d["classes"] = {str(k): v for k, v in self.classes.items()}
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def intensity_range(array: np.ndarray, record: Preprocessing) -> tuple[float, float]:
    """The (low, high) input values mapped to 0 and 1.

    Compute it once per volume and pass it to :func:`prepare_slice` so every slice of a volume is scaled alike.
    """
    if record.intensity == "ct":
        half = record.window_width / 2.0
        return record.window_level - half, record.window_level + half
    if record.intensity == "none":
        return 0.0, 1.0
    finite = np.asarray(array, dtype=np.float64)
    if record.intensity == "mr":
        lo, hi = np.percentile(finite, record.percentiles)
    else:
        lo, hi = float(finite.min()), float(finite.max())
    return float(lo), float(hi)


def normalize_intensity(array: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """Clip to ``value_range`` and scale to ``[0, 1]`` as float32 (a constant image becomes all zeros)."""
    lo, hi = value_range
    out = np.asarray(array, dtype=np.float32)
    if hi <= lo:
        return np.zeros_like(out, dtype=np.float32)
    return ((np.clip(out, lo, hi) - lo) / (hi - lo)).astype(np.float32)


@dataclass(frozen=True)
class SliceTransform:
    """Geometry of one slice's trip into the model input and back.

    Attributes:
        original_size: ``(H, W)`` of the slice in pixels.
        resized_size: ``(h, w)`` after resizing, before padding (``h, w <= image_size``).
        image_size: side of the square model input.
    """

    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    image_size: int

    @classmethod
    def create(
        cls, original_size: tuple[int, int], image_size: int, resize: str = "longest"
    ) -> SliceTransform:
        h, w = (int(v) for v in original_size)
        if h < 1 or w < 1:
            raise ValueError(f"slice size must be positive, got {original_size}")
        if resize == "square":
            return cls((h, w), (image_size, image_size), image_size)
        scale = image_size / max(h, w)
        return cls((h, w), (max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))), image_size)

    @property
    def scale_xy(self) -> tuple[float, float]:
        (h, w), (rh, rw) = self.original_size, self.resized_size
        return rw / w, rh / h

    def coords_to_input(self, coords: np.ndarray) -> np.ndarray:
        """Map ``N x 2`` (x, y) slice-pixel coordinates (or boxes as ``N x 4``) to model-input coordinates."""
        c: np.ndarray = np.array(coords, dtype=np.float64)
        sx, sy = self.scale_xy
        c[..., 0::2] *= sx
        c[..., 1::2] *= sy
        return c

    def coords_to_original(self, coords: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`coords_to_input`."""
        c: np.ndarray = np.array(coords, dtype=np.float64)
        sx, sy = self.scale_xy
        c[..., 0::2] /= sx
        c[..., 1::2] /= sy
        return c


def prepare_slice(
    slice_2d: np.ndarray,
    record: Preprocessing,
    value_range: tuple[float, float] | None = None,
) -> tuple[torch.Tensor, SliceTransform]:
    """Turn one 2-D slice into SAM input.

    Args:
        slice_2d: ``H x W`` array of any numeric dtype (HU for CT), or ``H x W x C`` with ``C <= 3``.
        record: the preprocessing record.
        value_range: the (low, high) intensities mapped to 0 and 1; computed from this slice when ``None``
            (pass the volume's range from :func:`intensity_range` for consistent volumes).

    Returns:
        ``3 x S x S`` float32 tensor (S = ``record.image_size``) and the :class:`SliceTransform`.

    Raises:
        ValueError: the slice is not 2-D (or 2-D + channels) or holds NaN/Inf.
    """

    arr = np.asarray(slice_2d)
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3 and arr.shape[-1] <= 3:
        arr = np.moveaxis(arr, -1, 0)
    else:
        raise ValueError(f"prepare_slice expects an H x W (or H x W x C<=3) array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("prepare_slice: the slice contains NaN or Inf values")
    if value_range is None:
        value_range = intensity_range(arr, record)
    x = torch.from_numpy(normalize_intensity(arr, value_range))  # C x H x W in [0, 1]
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    elif x.shape[0] == 2:
        x = torch.cat([x, x[:1]], dim=0)
    tf = SliceTransform.create(tuple(arr.shape[1:]), record.image_size, record.resize)
    if tuple(x.shape[1:]) != tf.resized_size:
        x = F.interpolate(
            x[None], size=tf.resized_size, mode="bilinear", align_corners=False, antialias=True
        )[0]
        x = x.clamp_(0.0, 1.0)
    if record.input_scaling == "sam":
        mean = torch.tensor(SAM_PIXEL_MEAN).view(3, 1, 1)
        std = torch.tensor(SAM_PIXEL_STD).view(3, 1, 1)
        x = (x * 255.0 - mean) / std
    s = record.image_size
    out = torch.zeros(3, s, s, dtype=torch.float32)
    out[:, : tf.resized_size[0], : tf.resized_size[1]] = x
    return out, tf


def logits_to_original(logits: torch.Tensor, transform: SliceTransform) -> torch.Tensor:
    """Map mask logits (``... x h x w``, low resolution or at the input size) back to the slice's original
    ``H x W`` (bilinear)."""

    lead = logits.shape[:-2]
    x = logits.reshape(-1, 1, *logits.shape[-2:]).float()
    s = transform.image_size
    if tuple(x.shape[-2:]) != (s, s):  # full-resolution logits are already at the input size
        x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
    x = x[..., : transform.resized_size[0], : transform.resized_size[1]]
    x = F.interpolate(x, size=transform.original_size, mode="bilinear", align_corners=False)
    return x.reshape(*lead, *transform.original_size)
