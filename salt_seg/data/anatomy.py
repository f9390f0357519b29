"""Seeded 2-D synthetic "anatomy": label maps with many adjacent structures, and images generated from them.

In the spirit of SynthSeg (Billot et al. 2023) and SynthMorph (Hoffmann et al. 2022): nothing here reads a real
image, template or atlas. Every sample is drawn from the given random generator only:

Label map (0 = background/outside, ``1..K`` structures, K drawn in :attr:`AnatomyParams.n_labels`)
    * a **body**: a deformed ellipse covering 40-90 % of the field (sometimes cut by the border);
    * optional nested **shells** along the body's boundary (skin / skull / CSF-like rings, 2-8 px each);
    * a **tissue partition** of the inside: the argmax of a few smooth random fields (SynthMorph-style);
    * an optional **folded cortex**: sulcal fluid (an unbroken thin outer layer plus narrow, sometimes branched
      clefts reaching 8-32 px in from the surface) and a ribbon (2-6 px) lining it, so the ribbon follows
      every sulcus and wraps finger-like gyri of the deeper tissue; without a fluid label the innermost
      shell (or the ribbon) fills the sulci;
    * thin **ribbons** (1-4 px): bands ``|f| / |grad f| < w / 2`` of a smooth field ``f`` inside a random
      window, or random smooth curves (vessel / septum-like);
    * compact **nuclei** (3-16 % of the side across): deformed ellipses, crescents (ventricle horns), some
      mirrored pairs sharing one label, some nested (a core inside a rim), some placed against the previous
      one, some fluid (dark or bright like CSF).
    The map is then warped by a random affine (rotation, scale 0.8-1.2, shear) and a smooth elastic
    deformation, nearest-neighbour. Structures left with fewer than ``min_pixels`` pixels are **merged into
    the neighbour they share most boundary with** (a structure big enough, or the background; the
    background also when they touch nothing), smallest first; the ids are made contiguous ``1..K``
    keeping the drawing order (shells first, then tissues, cortex, ribbons, nuclei), and if fewer than the
    minimum ``K`` survived, extra small nuclei are added.

Image
    One of two contrast modes per sample: ``mr`` (each label a uniform random mean in ``[0, 1]``, fluid labels
    share one dark or bright level) or ``ct`` (Hounsfield-like means per tissue kind: air -1000, fat ~-100,
    fluid 0-20, soft tissue 20-80, contrast vessels 150-350, bone 300-1500, then a random window/level),
    a small per-label texture, sometimes two adjacent labels with nearly equal means (low-contrast
    boundaries); then a multiplicative smooth bias field, Gaussian blur (partial volume), a random lower
    resolution along one or both axes (slice thickness), Gaussian or Rician noise, min-max or percentile
    normalisation to ``[0, 1]`` and a random gamma.

The label map is drawn on a canvas 1.3 times the field (the body never touches the canvas border, so the
affine never rotates a straight cut into view) and warped into the field.

Speed: smooth fields are drawn at a few samples per smoothing sigma and upsampled by separable linear
interpolation (two matrix products); one 256 x 256 sample takes about 25-30 ms of CPU on one core, a
128 x 128 one about 10 ms (``tests/data/test_anatomy.py`` guards a loose bound).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from functools import lru_cache

import numpy as np
from scipy import ndimage

from salt_seg.data.synthetic import interp_matrix

#: seed of the fixed held-out set of :func:`heldout_anatomy` (the same as the pretraining stream's held-out set)
HELDOUT_SEED = 31337

# range-valued fields: (lowest allowed, highest allowed, integer?)
_RANGES: dict[str, tuple[float, float, bool]] = {
    "n_labels": (1, 64, True),
    "body_area": (0.05, 1.0, False),
    "n_shells": (1, 4, True),
    "shell_width": (1.0, 32.0, False),
    "n_tissues": (1, 12, True),
    "tissue_scale": (0.01, 1.0, False),
    "cortex_width": (1.0, 16.0, False),
    "cortex_folding": (0.0, 32.0, False),
    "n_ribbons": (0, 12, True),
    "ribbon_width": (1.0, 8.0, False),
    "n_nuclei": (0, 32, True),
    "nucleus_size": (0.01, 0.5, False),
    "scale": (0.25, 4.0, False),
    "elastic_scale": (0.02, 1.0, False),
    "intensity_std": (0.0, 0.5, False),
    "blur_sigma": (0.0, 8.0, False),
    "downsample": (1.0, 8.0, False),
    "noise_std": (0.0, 0.5, False),
    "gamma": (0.1, 10.0, False),
}
# scalar fields: (lowest allowed, highest allowed)
_SCALARS: dict[str, tuple[float, float]] = {
    "body_irregularity": (0.0, 0.5),
    "shell_prob": (0.0, 1.0),
    "cortex_prob": (0.0, 1.0),
    "fluid_prob": (0.0, 1.0),
    "rotation": (0.0, 180.0),
    "shear": (0.0, 1.0),
    "elastic_strength": (0.0, 0.2),
    "ct_prob": (0.0, 1.0),
    "similar_prob": (0.0, 1.0),
    "bright_background_prob": (0.0, 1.0),
    "bias_strength": (0.0, 0.9),
    "rician_prob": (0.0, 1.0),
}


@dataclass(frozen=True)
class AnatomyParams:
    """Knobs of :func:`synthetic_anatomy_2d`; a pair ``(lo, hi)`` is a range a value is drawn from per sample.

    Widths are in pixels at a 256 px field (see ``width_scale``), sizes and scales are fractions of the shorter
    side of ``shape``.

    Attributes:
        shape: ``(H, W)`` of the sample, each side at least 32.
        n_labels: range of the number ``K`` of structure labels (``1..K``; 0 is background).
        body_area: fraction of the field covered by the body ellipse (before it is cut by the border).
        body_irregularity: amplitude of the radial harmonics deforming the body's outline.
        shell_prob: probability of nested outer shells (skin / skull / CSF-like rings).
        n_shells: how many shells when there are shells.
        shell_width: width of each shell (px).
        n_tissues: classes of the smooth random partition of the inside.
        tissue_scale: smoothing scale of the partition's noise fields.
        cortex_prob: probability of a folded cortex-like ribbon inside the shells.
        cortex_width: the ribbon's width (px).
        cortex_folding: length (px) of the sulci (clefts reaching in from the surface, lined by the ribbon).
        n_ribbons: thin curvilinear structures.
        ribbon_width: their width (px).
        n_nuclei: compact blobs (nuclei, ventricles).
        nucleus_size: their diameter.
        fluid_prob: probability that a nucleus is fluid (CSF-like intensity).
        rotation: largest rotation of the affine (degrees, either way).
        scale: range of the affine's scale.
        shear: largest shear of the affine.
        elastic_strength: standard deviation of the elastic displacement.
        elastic_scale: smoothing scale of the elastic displacement.
        ct_prob: probability of the CT contrast mode (else MR).
        intensity_std: range of the per-label texture standard deviation (image units).
        similar_prob: probability that two adjacent labels get nearly equal mean intensities.
        bright_background_prob: probability (MR) of a background brighter than dark air.
        bias_strength: largest relative amplitude of the multiplicative bias field.
        blur_sigma: range of the Gaussian blur (px).
        downsample: range of the resolution-loss factor (1 = none) along one or both axes.
        noise_std: range of the noise standard deviation (image units).
        rician_prob: probability that the noise is Rician (magnitude of complex Gaussian noise).
        gamma: range of the final gamma (drawn log-uniformly).
        min_pixels: structures smaller than this after the deformation are merged into a neighbour.
        width_scale: factor on every width given in px (shells, cortex, sulci, ribbons); None: ``sqrt(side /
            256)`` with ``side`` the shorter side of ``shape``, so the px values hold at 256 px, a 128 px field
            gets 0.71 of them (thinner, not half: 1-px structures stay drawable).
    """

    shape: tuple[int, int] = (256, 256)
    n_labels: tuple[int, int] = (4, 16)
    body_area: tuple[float, float] = (0.4, 0.9)
    body_irregularity: float = 0.12
    shell_prob: float = 0.7
    n_shells: tuple[int, int] = (1, 3)
    shell_width: tuple[float, float] = (2.0, 8.0)
    n_tissues: tuple[int, int] = (1, 5)
    tissue_scale: tuple[float, float] = (0.05, 0.15)
    cortex_prob: float = 0.7
    cortex_width: tuple[float, float] = (2.0, 6.0)
    cortex_folding: tuple[float, float] = (8.0, 32.0)
    n_ribbons: tuple[int, int] = (0, 3)
    ribbon_width: tuple[float, float] = (1.0, 4.0)
    n_nuclei: tuple[int, int] = (1, 8)
    nucleus_size: tuple[float, float] = (0.03, 0.16)
    fluid_prob: float = 0.35
    rotation: float = 180.0
    scale: tuple[float, float] = (0.8, 1.2)
    shear: float = 0.15
    elastic_strength: float = 0.02
    elastic_scale: tuple[float, float] = (0.08, 0.25)
    ct_prob: float = 0.3
    intensity_std: tuple[float, float] = (0.0, 0.05)
    similar_prob: float = 0.3
    bright_background_prob: float = 0.05
    bias_strength: float = 0.3
    blur_sigma: tuple[float, float] = (0.0, 1.5)
    downsample: tuple[float, float] = (1.0, 3.0)
    noise_std: tuple[float, float] = (0.0, 0.08)
    rician_prob: float = 0.3
    gamma: tuple[float, float] = (0.7, 1.5)
    min_pixels: int = 10
    width_scale: float | None = None

    def __post_init__(self) -> None:
        shape = self.shape
        if (
            not isinstance(shape, tuple)
            or len(shape) != 2
            or not all(isinstance(s, (int, np.integer)) and s >= 32 for s in shape)
        ):
            raise ValueError(f"AnatomyParams.shape must be a tuple of two ints >= 32, got {shape!r}")
        for name, (lo_ok, hi_ok, integer) in _RANGES.items():
            value = getattr(self, name)
            kind = "ints" if integer else "numbers"
            ok = isinstance(value, tuple) and len(value) == 2
            ok = ok and all(
                isinstance(v, (int, np.integer)) if integer else isinstance(v, (int, float, np.number))
                for v in value
            )
            if not ok or not lo_ok <= value[0] <= value[1] <= hi_ok:
                raise ValueError(
                    f"AnatomyParams.{name} must be a pair (lo, hi) of {kind} with "
                    f"{lo_ok} <= lo <= hi <= {hi_ok}, got {value!r}"
                )
        for name, (lo_ok, hi_ok) in _SCALARS.items():
            value = getattr(self, name)
            if not isinstance(value, (int, float, np.number)) or not lo_ok <= value <= hi_ok:
                raise ValueError(
                    f"AnatomyParams.{name} must be a number in [{lo_ok}, {hi_ok}], got {value!r}"
                )
        ws = self.width_scale
        if ws is not None and (not isinstance(ws, (int, float, np.number)) or not 0.1 <= ws <= 8.0):
            raise ValueError(f"AnatomyParams.width_scale must be None or a number in [0.1, 8], got {ws!r}")
        if not isinstance(self.min_pixels, (int, np.integer)) or not 1 <= self.min_pixels <= 1000:
            raise ValueError(f"AnatomyParams.min_pixels must be an int in [1, 1000], got {self.min_pixels!r}")
        if self.n_labels[0] < 1:
            raise ValueError(f"AnatomyParams.n_labels must allow at least one label, got {self.n_labels!r}")


# every field is validated above or is the shape
assert {f.name for f in fields(AnatomyParams)} == {"shape", "min_pixels", "width_scale", *_RANGES, *_SCALARS}


# ---------------------------------------------------------------------------------------------- fields, grids
def _resize(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Separable linear resampling of a 2-D float array (no antialiasing: blur first when shrinking)."""
    return interp_matrix(shape[0], a.shape[0]) @ a @ interp_matrix(shape[1], a.shape[1]).T


@lru_cache(maxsize=8)
def _grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.meshgrid(
        np.arange(shape[0], dtype=np.float32), np.arange(shape[1], dtype=np.float32), indexing="ij"
    )
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def _smooth(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-filtered white noise of smoothing ``sigma`` px, zero mean, unit std, float32.

    Drawn on a grid about ``sigma / 3`` px coarser than ``shape`` (a few samples per sigma) and upsampled.
    """
    f = max(1.0, sigma / 3.0)
    low = (max(4, math.ceil(shape[0] / f)), max(4, math.ceil(shape[1] / f)))
    noise = rng.standard_normal(low, dtype=np.float32)
    field = ndimage.gaussian_filter(
        noise, (sigma * low[0] / shape[0], sigma * low[1] / shape[1]), mode="wrap"
    )
    field -= field.mean()
    field /= field.std() + 1e-6
    return field if low == shape else _resize(field, shape)


def _uniform(rng: np.random.Generator, r: tuple[float, float]) -> float:
    return float(rng.uniform(r[0], r[1]))


def _integer(rng: np.random.Generator, r: tuple[int, int]) -> int:
    return int(rng.integers(r[0], r[1] + 1))


def _loguniform(rng: np.random.Generator, r: tuple[float, float]) -> float:
    return float(np.exp(rng.uniform(np.log(r[0]), np.log(r[1]))))


# ------------------------------------------------------------------------------------------------ label map
def _width_scale(p: AnatomyParams) -> float:
    return p.width_scale if p.width_scale is not None else math.sqrt(min(p.shape) / 256)


#: side of the canvas the label map is drawn on, relative to the field
_CANVAS = 1.3
# tissue kinds: they set the CT intensities (and fluid the MR ones)
_SOFT, _FAT, _FLUID, _BONE, _VESSEL, _AIR = "soft", "fat", "fluid", "bone", "vessel", "air"


def _budget(p: AnatomyParams, rng: np.random.Generator) -> dict[str, int]:
    """How many labels each kind of structure gets, summing to ``K`` drawn in ``n_labels``."""
    k = _integer(rng, p.n_labels)
    n = {
        "shells": _integer(rng, p.n_shells) if rng.random() < p.shell_prob else 0,
        "cortex": (2 if rng.random() < 0.6 else 1) if rng.random() < p.cortex_prob else 0,
        "tissues": _integer(rng, p.n_tissues),
        "ribbons": _integer(rng, p.n_ribbons),
        "nuclei": _integer(rng, p.n_nuclei),
    }
    floor = {"shells": 0, "cortex": 0, "tissues": 1, "ribbons": 0, "nuclei": 0}
    ceiling = {
        "shells": p.n_shells[1],
        "cortex": 2,
        "tissues": p.n_tissues[1],
        "ribbons": p.n_ribbons[1],
        "nuclei": p.n_nuclei[1],
    }
    weights = {"shells": 0.5, "cortex": 0.5, "tissues": 1.0, "ribbons": 1.0, "nuclei": 2.0}
    while sum(n.values()) > k:
        names = [s for s in n if n[s] > floor[s]]
        w = np.array([weights[s] for s in names])
        n[names[int(rng.choice(len(names), p=w / w.sum()))]] -= 1
    while sum(n.values()) < k:
        # (shells only where the sample has shells, never a third cortex label)
        names = [s for s in n if n[s] < ceiling[s] and s != "cortex" and (s != "shells" or n[s])] or [
            "nuclei"
        ]
        w = np.array([weights[s] for s in names])
        n[names[int(rng.choice(len(names), p=w / w.sum()))]] += 1
    return n


def _blob(
    yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, radius: float, rng: np.random.Generator, amp: float
) -> np.ndarray:
    """A deformed ellipse (random aspect, orientation and radial harmonics 2..4) on the coordinates given."""
    t = rng.uniform(0, np.pi)
    aspect = float(np.exp(rng.uniform(-0.5, 0.5)))
    y, x = yy - cy, xx - cx
    u = (np.cos(t) * x + np.sin(t) * y) / (radius * math.sqrt(aspect))
    v = (-np.sin(t) * x + np.cos(t) * y) / (radius / math.sqrt(aspect))
    rad = np.ones_like(u)
    if amp > 0:
        phi = np.arctan2(v, u)
        for k in (2, 3, 4):
            rad += rng.uniform(0, amp) / (k - 1) ** 1.5 * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    return u * u + v * v < rad * rad


def _box(shape: tuple[int, int], cy: float, cx: float, half: float) -> tuple[slice, slice] | None:
    y0, y1 = max(0, int(cy - half)), min(shape[0], int(cy + half) + 2)
    x0, x1 = max(0, int(cx - half)), min(shape[1], int(cx + half) + 2)
    return (slice(y0, y1), slice(x0, x1)) if y0 < y1 and x0 < x1 else None


def _paint_blob(
    label: np.ndarray,
    allowed: np.ndarray,
    cy: float,
    cx: float,
    radius: float,
    lid: int,
    rng: np.random.Generator,
    crescent: bool = False,
) -> np.ndarray | None:
    """Paint one nucleus (``lid``) where ``allowed``; returns its mask within its box (or None if empty)."""
    yy, xx = _grid(label.shape)
    box = _box(label.shape, cy, cx, 1.6 * radius + 2)
    if box is None:
        return None
    by, bx = yy[box], xx[box]
    mask = _blob(by, bx, cy, cx, radius, rng, 0.35)
    if crescent:  # remove an offset blob: a horn / crescent (ventricle-like)
        a = rng.uniform(0, 2 * np.pi)
        d = rng.uniform(0.3, 0.7) * radius
        mask &= ~_blob(by, bx, cy + d * np.sin(a), cx + d * np.cos(a), radius * 0.9, rng, 0.1)
    mask &= allowed[box]
    if not mask.any():
        return None
    label[box][mask] = lid
    return mask


def _label_map(p: AnatomyParams, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """The undeformed label map, on a canvas larger than the field, and the tissue kind of each id (0 = air).

    Sizes are relative to the field (``p.shape``); the margin keeps the body from being cut by a border that
    the affine would rotate into the field.
    """
    out_h, out_w = p.shape
    side = min(p.shape)
    px = _width_scale(p)
    shape = (round(_CANVAS * out_h), round(_CANVAS * out_w))
    h, w = shape
    yy, xx = _grid(shape)
    n = _budget(p, rng)
    kinds: list[str] = [_AIR]
    label = np.zeros(shape, dtype=np.int16)

    # body: deformed ellipse, kept inside the canvas (it may still leave the field once warped)
    area = _uniform(rng, p.body_area) * out_h * out_w
    aspect = float(np.exp(rng.uniform(-0.35, 0.35)))
    a, b = math.sqrt(area / np.pi * aspect), math.sqrt(area / np.pi / aspect)
    dy, dx = rng.uniform(-0.08, 0.08) * out_h, rng.uniform(-0.08, 0.08) * out_w
    body_y, body_x = h / 2 + dy, w / 2 + dx
    rad = 0.04 * _smooth(shape, 0.08 * side, rng)
    amps = [rng.uniform(0, p.body_irregularity) / (k - 1) ** 1.5 for k in (2, 3, 4, 5)]
    reach = 1.0 + float(np.abs(rad).max()) + sum(amps)
    a = min(a, (w / 2 - abs(dx) - 2) / reach)
    b = min(b, (h / 2 - abs(dy) - 2) / reach)
    y, x = (yy - body_y) / b, (xx - body_x) / a
    phi = np.arctan2(y, x)
    rad += 1.0
    for k, amp in zip((2, 3, 4, 5), amps, strict=True):
        rad += amp * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    body = x * x + y * y < rad * rad
    depth = ndimage.distance_transform_edt(body).astype(np.float32)

    # shells along the boundary (skin, skull, CSF ...), each with a slightly varying width
    edge = 0.0
    if n["shells"]:
        wobble = 0.6 * _smooth(shape, 0.05 * side, rng)
        shell_kinds = (
            [_SOFT, _BONE, _FLUID]
            if rng.random() < 0.7
            else [str(k) for k in rng.choice([_SOFT, _FAT, _BONE], 3)]
        )
        room = 0.35 * float(depth.max()) / n["shells"]  # small fields: the shells leave an inside
        for i in range(n["shells"]):
            width = min(px * _uniform(rng, p.shell_width), room)
            band = body & (depth + wobble > edge) & (depth + wobble <= edge + width)
            kinds.append(shell_kinds[i % 3])
            label[band] = len(kinds) - 1
            edge += width
        inside = body & (depth + wobble > edge)
    else:
        inside = body
    depth_in = depth - edge

    # tissue partition: argmax of smooth noise fields (SynthMorph)
    first = len(kinds)
    if n["tissues"] == 1:
        tissue = np.zeros(shape, dtype=np.int16)
    else:
        sigma = _uniform(rng, p.tissue_scale) * side
        stack = np.stack(
            [
                _smooth(shape, sigma, rng) + 0.4 * _smooth(shape, 0.3 * sigma, rng) + rng.uniform(-0.5, 0.5)
                for _ in range(n["tissues"])
            ]
        )
        tissue = stack.argmax(axis=0).astype(np.int16)
    for _ in range(n["tissues"]):
        kinds.append(_FAT if rng.random() < 0.15 else _SOFT)
    label[inside] = first + tissue[inside]

    # folded cortex: sulcal fluid = a thin outer layer plus clefts (narrow curves reaching in from the
    # surface, some branched); the cortex = everything inside within `width` px of that fluid, so it lines
    # both banks of every sulcus and wraps finger-like gyri of what lies deeper (white-matter-like)
    deep = inside
    if n["cortex"]:
        # the outer layer is unbroken: at least the first ring of pixels (depth <= 1), thicker in places
        limit = rng.uniform(1.2, 2.5) + rng.uniform(0.3, 1.5) * np.abs(_smooth(shape, 0.03 * side, rng))
        csf = inside & (depth_in < limit)
        rim = np.flatnonzero(inside & ~csf & (depth_in < limit + 1.5))
        n_clefts = min(rim.size, int(rim.size / 1.5 / (px * rng.uniform(6.0, 20.0))))  # one per 6-20 px
        if n_clefts:
            gy, gx = np.gradient(depth_in)
            for c in rng.choice(rim, n_clefts, replace=False):
                y0, x0 = divmod(int(c), w)
                heading = math.atan2(gy[y0, x0], gx[y0, x0]) + rng.normal(0, 0.3)
                length = px * _uniform(rng, p.cortex_folding)
                cleft = px * rng.uniform(1.0, 2.5)
                ys, xs = _stroke(shape, y0, x0, heading, length, cleft, rng.uniform(0, 1.5), rng)
                csf[ys, xs] = True
                if rng.random() < 0.3 and ys.size > 4:  # a side branch from the middle
                    m = ys.size // 2
                    turn = rng.choice([-1, 1]) * rng.uniform(0.4, 1.0)
                    ys, xs = _stroke(shape, ys[m], xs[m], heading + turn, 0.5 * length, cleft, 0.5, rng)
                    csf[ys, xs] = True
        csf &= inside
        width = px * _uniform(rng, p.cortex_width)
        outer = csf
        ribbon = inside & ~csf & (ndimage.distance_transform_edt(~csf) <= width)
        # pockets of white matter cut off between sulci (< 40 px) join the cortex
        pockets, n_pockets = ndimage.label(inside & ~csf & ~ribbon)
        if n_pockets > 1:
            small = np.bincount(pockets.ravel(), minlength=n_pockets + 1) < 40
            small[0] = False
            ribbon |= small[pockets]
        kinds.append(_SOFT)
        cortex_id = len(kinds) - 1
        if n["cortex"] == 2:
            kinds.append(_FLUID)
            label[outer] = len(kinds) - 1
        elif n["shells"]:
            label[outer] = first - 1  # the innermost shell reaches into the sulci
        else:
            label[outer] = cortex_id  # no fluid label: the cortex takes its place
        label[ribbon] = cortex_id
        deep = inside & ~outer & ~ribbon

    # thin ribbons: bands of smooth fields inside a random window, or random smooth curves
    for _ in range(n["ribbons"]):
        width = px * _uniform(rng, p.ribbon_width)
        kinds.append(str(rng.choice([_SOFT, _FAT, _VESSEL, _FLUID], p=[0.4, 0.2, 0.25, 0.15])))
        lid = len(kinds) - 1
        if rng.random() < 0.5:
            f = _smooth(shape, rng.uniform(0.03, 0.12) * side, rng)
            gy, gx = np.gradient(f)
            grad = np.sqrt(gy * gy + gx * gx)
            window = _smooth(shape, 0.1 * side, rng) > rng.uniform(0.0, 0.8)
            band = (np.abs(f) < 0.5 * width * grad) & (grad > 0.3 * grad.mean()) & window & inside
            label[band] = lid
        else:
            pts = np.flatnonzero(inside & (depth_in > 4))
            if pts.size:
                y0, x0 = divmod(int(pts[rng.integers(pts.size)]), w)
                length = rng.uniform(0.15, 0.6) * side
                ys, xs = _stroke(
                    shape, y0, x0, rng.uniform(0, 2 * np.pi), length, width, rng.uniform(0, 6), rng
                )
                keep = inside[ys, xs]
                label[ys[keep], xs[keep]] = lid

    # nuclei: compact blobs, some adjacent, some crescents, some mirrored pairs, some nested, some fluid
    remaining = n["nuclei"]
    prev: tuple[float, float, float] | None = None
    candidates = np.flatnonzero(deep if deep.any() else inside if inside.any() else body)
    while remaining > 0:
        radius = 0.5 * _loguniform(rng, p.nucleus_size) * side
        if prev is not None and rng.random() < 0.5:  # against the previous one
            t = rng.uniform(0, 2 * np.pi)
            d = 0.9 * (prev[2] + radius)
            cy, cx = prev[0] + d * np.sin(t), prev[1] + d * np.cos(t)
        elif rng.random() < 0.5:  # near the middle, like deep grey nuclei and ventricles
            cy = body_y + rng.normal(0, 0.2) * b
            cx = body_x + rng.normal(0, 0.2) * a
        else:  # anywhere deep
            c = int(candidates[rng.integers(candidates.size)])
            cy, cx = float(c // w), float(c % w)
        fluid = rng.random() < p.fluid_prob
        kinds.append(_FLUID if fluid else (_BONE if rng.random() < 0.03 else _SOFT))
        lid = len(kinds) - 1
        crescent = fluid and rng.random() < 0.5
        mirror = rng.random() < 0.25
        centres = [(cy, cx)] + ([(cy, 2 * body_x - cx)] if mirror else [])  # a left/right pair
        nested = remaining >= 2 and not crescent and rng.random() < 0.2
        for y0, x0 in centres:
            _paint_blob(label, inside, y0, x0, radius, lid, rng, crescent)
        if nested:
            kinds.append(_FLUID if rng.random() < 0.5 else _SOFT)
            for y0, x0 in centres:
                _paint_blob(label, label == lid, y0, x0, 0.5 * radius, len(kinds) - 1, rng)
            remaining -= 1
        remaining -= 1
        prev = (cy, cx, radius)
    return label, kinds


def _stroke(
    shape: tuple[int, int],
    y0: float,
    x0: float,
    heading: float,
    length: float,
    width: float,
    curl: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of a smooth random curve of ``width`` px from ``(y0, x0)``: the heading's random walk, smoothed,
    turns by at most about ``curl`` radians in all."""
    steps = max(4, int(2 * length))  # half-pixel steps
    turn = ndimage.gaussian_filter1d(rng.standard_normal(steps), max(1.0, steps / 8), mode="nearest")
    turn *= curl / (np.abs(turn).sum() + 1e-6)
    angle = heading + np.cumsum(turn)
    py = y0 + 0.5 * np.cumsum(np.sin(angle))
    px = x0 + 0.5 * np.cumsum(np.cos(angle))
    r = 0.5 * width
    ri = int(math.ceil(r))
    offsets = [
        (dy, dx) for dy in range(-ri, ri + 1) for dx in range(-ri, ri + 1) if dy * dy + dx * dx <= r * r
    ]
    iy, ix = np.rint(py).astype(np.int64), np.rint(px).astype(np.int64)
    ys = np.concatenate([iy + dy for dy, _ in offsets or [(0, 0)]])
    xs = np.concatenate([ix + dx for _, dx in offsets or [(0, 0)]])
    ok = (ys >= 0) & (ys < shape[0]) & (xs >= 0) & (xs < shape[1])
    return ys[ok], xs[ok]


def _warp(label: np.ndarray, p: AnatomyParams, rng: np.random.Generator) -> np.ndarray:
    """Random affine + smooth elastic deformation of the canvas into the field, nearest neighbour."""
    shape = p.shape
    side = min(shape)
    yy, xx = _grid(shape)
    t = np.deg2rad(rng.uniform(-p.rotation, p.rotation))
    s = _uniform(rng, p.scale)
    stretch = float(np.exp(rng.uniform(-0.1, 0.1)))
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    shear = np.array([[1.0, rng.uniform(-p.shear, p.shear)], [0.0, 1.0]])
    m = rot @ shear @ np.diag([stretch, 1 / stretch]) / s  # output -> input coordinates
    y, x = yy - (shape[0] - 1) / 2, xx - (shape[1] - 1) / 2
    src_y = m[0, 0] * y + m[0, 1] * x + (label.shape[0] - 1) / 2
    src_x = m[1, 0] * y + m[1, 1] * x + (label.shape[1] - 1) / 2
    if p.elastic_strength > 0:
        sigma = _uniform(rng, p.elastic_scale) * side
        amp = p.elastic_strength * side
        src_y += amp * _smooth(shape, sigma, rng)
        src_x += amp * _smooth(shape, sigma, rng)
    return ndimage.map_coordinates(label, [src_y, src_x], order=0, mode="constant", cval=0, prefilter=False)


def _merge_small(label: np.ndarray, n_ids: int, min_pixels: int) -> None:
    """Merge every structure under ``min_pixels`` (smallest first) into the neighbour it shares most boundary
    with, preferring structures of at least ``min_pixels`` and the background; background if it touches none."""
    counts = np.bincount(label.ravel(), minlength=n_ids)
    small = [int(i) for i in np.argsort(counts, kind="stable") if i > 0 and 0 < counts[i] < min_pixels]
    if not small:
        return
    boxes = ndimage.find_objects(label)
    for i in small:
        if boxes[i - 1] is None:
            continue
        sy, sx = boxes[i - 1]
        box = (
            slice(max(0, sy.start - 1), min(label.shape[0], sy.stop + 1)),
            slice(max(0, sx.start - 1), min(label.shape[1], sx.stop + 1)),
        )
        sub = label[box]
        mask = sub == i
        ring = ndimage.binary_dilation(mask) & ~mask
        near = np.bincount(sub[ring], minlength=n_ids) if ring.any() else np.zeros(n_ids, int)
        near[i] = 0
        big = np.where(counts >= min_pixels, near, 0)
        target = int(big.argmax()) if big.any() else int(near.argmax())
        sub[mask] = target
        counts[target] += counts[i]
        counts[i] = 0


# --------------------------------------------------------------------------------------------------- image
def _means(
    label: np.ndarray, kinds: list[str], p: AnatomyParams, rng: np.random.Generator
) -> tuple[np.ndarray, bool]:
    """Per-label mean intensity (index = label id) and whether the sample is CT-like (means in window units)."""
    k = len(kinds)
    ct = rng.random() < p.ct_prob
    if ct:
        ranges = {
            _AIR: (-1010, -990),
            _FAT: (-120, -80),
            _FLUID: (0, 20),
            _SOFT: (20, 80),
            _VESSEL: (150, 350),
            _BONE: (300, 1500),
        }
        hu = np.array([rng.uniform(*ranges[kind]) for kind in kinds])
    else:
        fluid_level = rng.uniform(0.0, 0.2) if rng.random() < 0.6 else rng.uniform(0.75, 1.0)
        hu = rng.uniform(0, 1, size=k)
        for i, kind in enumerate(kinds):
            if kind == _FLUID:
                hu[i] = fluid_level + rng.uniform(-0.06, 0.06)
            elif kind == _BONE and rng.random() < 0.7:
                hu[i] = rng.uniform(0.0, 0.25)
        hu[0] = rng.uniform(0.3, 1.0) if rng.random() < p.bright_background_prob else rng.uniform(0.0, 0.08)
    if k > 2 and rng.random() < p.similar_prob:  # low-contrast boundary between two touching structures
        pairs = _adjacent_pairs(label)
        pairs = pairs[(pairs[:, 0] > 0)] if pairs.size else pairs
        if len(pairs):
            a, b = pairs[rng.integers(len(pairs))]
            spread = 8.0 if ct else 0.04
            hu[b] = hu[a] + rng.uniform(-spread, spread)
    if ct:
        preset = rng.choice(4, p=[0.4, 0.25, 0.1, 0.25])  # bone windows (soft tissue all black) are rare
        level, width = [
            (rng.uniform(30, 50), rng.uniform(60, 120)),  # brain
            (rng.uniform(30, 70), rng.uniform(300, 500)),  # soft tissue
            (rng.uniform(300, 700), rng.uniform(1500, 2500)),  # bone
            (rng.uniform(-100, 200), rng.uniform(60, 1000)),  # anything
        ][preset]
        hu = (hu - (level - width / 2)) / width
    return hu.astype(np.float32), ct


def _adjacent_pairs(label: np.ndarray) -> np.ndarray:
    """Unique ``(a, b)`` pairs, ``a < b``, of labels that touch (4-connectivity)."""
    a = np.concatenate([label[:, :-1].ravel(), label[:-1, :].ravel()])
    b = np.concatenate([label[:, 1:].ravel(), label[1:, :].ravel()])
    d = a != b
    lo, hi = np.minimum(a[d], b[d]).astype(np.int64), np.maximum(a[d], b[d]).astype(np.int64)
    codes = np.unique(lo * 65536 + hi)
    return np.stack([codes // 65536, codes % 65536], axis=1)


def _render(label: np.ndarray, kinds: list[str], p: AnatomyParams, rng: np.random.Generator) -> np.ndarray:
    shape = label.shape
    side = min(shape)
    means, ct = _means(label, kinds, p, rng)
    std = rng.uniform(p.intensity_std[0], p.intensity_std[1], size=len(kinds)).astype(np.float32)
    std[0] *= 0.3
    mix = rng.uniform(0.3, 1.0)
    texture = mix * _smooth(shape, rng.uniform(1.0, 4.0), rng)
    texture += math.sqrt(1 - mix * mix) * rng.standard_normal(shape, dtype=np.float32)
    img = means[label] + std[label] * texture
    if ct:
        np.clip(img, 0.0, 1.0, out=img)

    if p.bias_strength > 0:  # multiplicative smooth bias field, up to +-bias_strength
        bias = _smooth(shape, rng.uniform(0.25, 0.6) * side, rng)
        bias *= rng.uniform(0, p.bias_strength) / (np.abs(bias).max() + 1e-6)
        img *= 1.0 + bias
    sigma = _uniform(rng, p.blur_sigma)
    if sigma > 0.2:  # partial volume
        img = ndimage.gaussian_filter(img, sigma, truncate=3.0)
    factor = _uniform(rng, p.downsample)
    if factor > 1.1:  # thick slices / low resolution along one or both axes, linear upsampling back
        axes = [(0,), (1,), (0, 1)][rng.integers(3)]
        f = [factor if a in axes else 1.0 for a in (0, 1)]
        img = ndimage.gaussian_filter(img, [0.4 * (fa - 1) for fa in f], truncate=3.0)
        low = (max(4, round(shape[0] / f[0])), max(4, round(shape[1] / f[1])))
        img = _resize(_resize(img, low), shape)
    noise = _uniform(rng, p.noise_std)
    if noise > 0:
        n1 = rng.standard_normal(shape, dtype=np.float32)
        if rng.random() < p.rician_prob:
            n2 = rng.standard_normal(shape, dtype=np.float32)
            img = np.sqrt((img + noise * n1) ** 2 + (noise * n2) ** 2)
        else:
            img = img + noise * n1
    if rng.random() < 0.5:
        lo, hi = float(img.min()), float(img.max())
    else:
        lo, hi = np.percentile(img, [rng.uniform(0.0, 1.0), rng.uniform(99.0, 100.0)])
    img = np.clip((img - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    img **= _loguniform(rng, p.gamma)
    return img.astype(np.float32, copy=False)


# ------------------------------------------------------------------------------------------------------ API
def _rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def synthetic_anatomy_2d(
    params: AnatomyParams = AnatomyParams(),  # noqa: B008 - frozen, immutable
    seed: int | np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic anatomy sample (see the module docstring); deterministic for an int seed.

    Returns:
        ``(image, label)``: ``image`` float32 ``H x W`` in ``[0, 1]``; ``label`` int64 ``H x W`` with 0 =
        background/outside and ``1..K`` the structures, every id present, ``K`` within ``params.n_labels``.
    """
    p = params
    rng = _rng(seed)
    label, kinds = _label_map(p, rng)
    label = _warp(label, p, rng)
    _merge_small(label, len(kinds), p.min_pixels)

    # contiguous ids (drawing order kept); top up with small nuclei if too few survived
    present = np.flatnonzero(np.bincount(label.ravel(), minlength=len(kinds)))
    present = present[present > 0]
    side = min(p.shape)
    tries = 0
    while present.size < p.n_labels[0] and tries < 4 * p.n_labels[0]:
        tries += 1
        inside = label > 0 if (label > 0).any() else np.ones(p.shape, dtype=bool)
        pts = np.flatnonzero(inside)
        c = int(pts[rng.integers(pts.size)])
        kinds.append(_FLUID if rng.random() < p.fluid_prob else _SOFT)
        radius = max(3.0, 0.5 * rng.uniform(0.04, 0.1) * side)
        before = label.copy()
        mask = _paint_blob(label, inside, c // p.shape[1], c % p.shape[1], radius, len(kinds) - 1, rng)
        if mask is not None and mask.sum() >= p.min_pixels:
            present = np.flatnonzero(np.bincount(label.ravel(), minlength=len(kinds)))
            present = present[present > 0]
        else:
            label = before
    counts = np.bincount(label.ravel(), minlength=len(kinds))
    present = np.flatnonzero(counts)
    present = present[present > 0]
    lut = np.zeros(len(kinds), dtype=np.int64)
    lut[present] = np.arange(1, present.size + 1)
    label = lut[label]
    kinds = [kinds[0]] + [kinds[i] for i in present]
    image = _render(label, kinds, p, rng)
    return image, label


def anatomy_classes(label: np.ndarray) -> list[int]:
    """The structure ids present in ``label`` (``1..K`` for a generator output), sorted."""
    ids = np.unique(np.asarray(label))
    return [int(i) for i in ids if i > 0]


def heldout_anatomy(
    n: int,
    seed: int = HELDOUT_SEED,
    params: AnatomyParams = AnatomyParams(),  # noqa: B008 - frozen, immutable
) -> list[tuple[np.ndarray, np.ndarray]]:
    """A fixed held-out set: ``n`` samples, sample ``i`` drawn from ``default_rng([seed, i])``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return [synthetic_anatomy_2d(params, np.random.default_rng([seed, i])) for i in range(n)]
