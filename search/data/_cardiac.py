"""The generated cardiac set: short-axis cine-MRI-like slices with ACDC labels.

Each patient is a stack of ``SLICES`` slices from base to apex with its own anatomy
(size, position, rotation, wall thickness, RV extent, fat, papillary muscles) and its
own acquisition (contrast, blur, bias field, Rician noise).  Every structure is a signed
distance field on a grid spanning [-1, 1], so edges are anti-aliased at any image size
and each label is exactly the region the image paints.  Patient ``p`` of seed ``s`` is
drawn from its own generator seeded with ``[s, p]``: arrays are bit-identical for the
same settings, and the first patients do not change when more are asked for. With two
frames (as ACDC's end-diastole and end-systole), the second is the same patient and
acquisition with the heart contracted (LV cavity 55-80 % of its radius, the wall
thicker), the contraction drawn from ``[s, p, 1]``.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.special import expit

CLASS_NAMES = ("background", "RV", "myocardium", "LV")
BACKGROUND, RV, MYOCARDIUM, LV = range(4)
SLICES = 10
# The spacing the generated set assumes: a 240 mm field of view, 10 mm from slice to slice
# (ACDC: 1.4-1.7 mm pixels on 200-400 mm, 5-10 mm slices).
FIELD_OF_VIEW_MM = 240.0
SLICE_MM = 10.0


def generate(image_size: int, seed: int, patients: int,
             frames: int = 1) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], tuple[str, ...]]:
    """``patients * frames * SLICES`` slices: images float32 (N, H, W), masks uint8 (N, H, W),
    the patient (group) and the volume (``patientNNN``, or ``patientNNN_frameF`` with
    two frames) of each; ``frames`` is 1 or 2 (end-diastole, then end-systole)."""
    if frames not in (1, 2):
        raise ValueError(f"frames must be 1 or 2, got {frames}")
    centres = (np.arange(image_size) + 0.5) * 2 / image_size - 1
    y, x = np.meshgrid(centres, centres, indexing="ij")
    depth = np.linspace(0, 1, SLICES)[:, None, None]  # 0 at the base, 1 at the apex
    images, masks, volumes = [], [], []
    for patient in range(patients):
        for frame in range(frames):
            contraction = np.random.default_rng([seed, patient, 1]).uniform(0.55, 0.8) if frame else 1.0
            image, mask = _patient(np.random.default_rng([seed, patient]), x, y, depth, 2 / image_size, contraction)
            images.append(image)
            masks.append(mask)
            volumes += [f"patient{patient + 1:03d}" + (f"_frame{frame + 1}" if frames > 1 else "")] * SLICES
    groups = tuple(volume.split("_")[0] for volume in volumes)
    return np.concatenate(images).astype(np.float32), np.concatenate(masks), groups, tuple(volumes)


def _patient(rng: np.random.Generator, x, y, depth, pixel: float, contraction: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """One patient's image and mask stacks, (SLICES, H, W) each; ``contraction`` < 1 is systole."""
    tissue = _tissue_values(rng)
    image = np.zeros(np.broadcast_shapes(x.shape, depth.shape))
    _paint_body(rng, image, x, y, depth, tissue, pixel)
    mask = _paint_heart(rng, image, x, y, depth, tissue, pixel, contraction)
    return _acquire(rng, image, x, y, tissue["blood"]), mask


def _tissue_values(rng: np.random.Generator) -> dict[str, float]:
    """bSSFP-like intensities, varied per patient: blood and fat bright, myocardium dark."""
    return {
        "blood": rng.uniform(0.75, 1.0),
        "myocardium": rng.uniform(0.16, 0.28),
        "fat": rng.uniform(0.6, 0.9),
        "muscle": rng.uniform(0.3, 0.42),
        "lung": rng.uniform(0.04, 0.1),
        "liver": rng.uniform(0.3, 0.45),
        "bone": rng.uniform(0.35, 0.5),
    }


def _paint_body(rng, image, x, y, depth, tissue, pixel) -> None:
    """Chest wall with subcutaneous fat, patches of mediastinal fat, lungs on both sides,
    the liver rising toward the apex, the descending aorta and the spine."""
    body = _ellipse(
        x, y, rng.normal(0, 0.05), rng.uniform(0.15, 0.35),
        rng.uniform(1.5, 1.8), rng.uniform(1.1, 1.35), rng.normal(0, 0.05),
    )
    body = body + _wobble(rng, image.shape, 0.04, pixel)
    _paint(image, _inside(body, pixel), tissue["fat"])
    _paint(image, _inside(body + rng.uniform(0.05, 0.1), pixel), tissue["muscle"])
    blobs = _wobble(rng, image.shape, 1, pixel)
    _paint(image, expit((blobs - 1.7) * 4) * _inside(body + 0.15, pixel), tissue["fat"])
    for side in (-1, 1):
        lung = _ellipse(
            x, y, side * rng.uniform(0.95, 1.15), rng.uniform(-0.45, -0.15),
            rng.uniform(0.4, 0.5), rng.uniform(0.75, 0.95), side * rng.uniform(0.1, 0.4),
        ) + _wobble(rng, image.shape, 0.06, pixel)
        _paint(image, _inside(lung, pixel), tissue["lung"])
    liver = _ellipse(x, y, rng.uniform(-0.7, -0.4), 1.4 - 0.5 * depth, 0.8, 0.45, rng.normal(0, 0.2))
    liver = liver + _wobble(rng, image.shape, 0.05, pixel)
    _paint(image, _inside(liver, pixel), tissue["liver"])
    aorta = _ellipse(x, y, rng.uniform(0.25, 0.45), rng.uniform(0.85, 0.95), 0.09, 0.09, 0)
    _paint(image, _inside(aorta, pixel), tissue["blood"] * 0.9)
    spine_x, spine_y = rng.normal(0, 0.05), rng.uniform(1.1, 1.2)
    _paint(image, _inside(_ellipse(x, y, spine_x, spine_y, 0.2, 0.17, 0), pixel), tissue["lung"])
    _paint(image, _inside(_ellipse(x, y, spine_x, spine_y, 0.17, 0.14, 0), pixel), tissue["bone"])


def _paint_heart(rng, image, x, y, depth, tissue, pixel, contraction: float = 1.0) -> np.ndarray:
    """Paint fat, myocardium, blood pools and papillary muscles; return the label stack.
    ``contraction`` scales the LV cavity's radius and thickens the wall as it shrinks."""
    slices = depth.shape[0]
    scale = rng.uniform(0.9, 1.15)
    cx = rng.uniform(0.1, 0.25) + rng.normal(0, 0.01, (slices, 1, 1))
    cy = rng.normal(0.0, 0.06) + rng.normal(0, 0.01, (slices, 1, 1))
    angle = rng.normal(0, 0.2) + depth * rng.normal(0, 0.15)
    u, v = _rotate(x - cx, y - cy, angle)
    radius, theta = np.hypot(u, v), np.arctan2(v, u)

    endo_radius = scale * rng.uniform(0.3, 0.36) * (1 - 0.5 * depth**1.5) * contraction
    endo = endo_radius * (
        1 + rng.uniform(0, 0.08) * np.cos(2 * (theta - rng.uniform(0, np.pi)))
        + rng.uniform(0, 0.04) * np.cos(3 * theta + rng.uniform(0, 2 * np.pi))
    )
    thickness = scale * rng.uniform(0.1, 0.15) * (1 + 0.2 * depth) * (2 - contraction)
    wall = thickness * (1 + rng.uniform(0.1, 0.35) * np.cos(theta - rng.uniform(0, 2 * np.pi)))
    d_endo = radius - endo + _wobble(rng, radius.shape, 0.008, pixel, scale=0.04)  # trabeculae
    d_epi = d_endo - wall

    # The RV: a crescent on the LV's left (the patient's right), tapering to the
    # insertion points, narrowing toward the apex and gone at the apex.
    extent = np.clip(rng.uniform(0.85, 1.1) * (1 - 1.1 * depth**1.3), 0, 1)
    extent = extent * (extent > 0.15)  # no sliver thinner than a pixel or two
    span = rng.uniform(1.1, 1.5) * (0.6 + 0.4 * extent)  # half the angle the RV wraps
    centre = np.pi + rng.normal(0.25, 0.15)  # left and a little anterior (up)
    offset = np.arctan2(np.sin(theta - centre), np.cos(theta - centre))
    taper = np.clip(np.cos(offset * np.pi / 2 / span), 0, 1) ** 0.6 * (np.abs(offset) < span)
    rv_width = (endo_radius + thickness) * rng.uniform(0.55, 0.9) * extent * taper
    d_rv = d_epi - rv_width
    rv_wall = rng.uniform(0.02, 0.035) * (rv_width > 0)

    heart = d_rv - rv_wall
    fat = rng.uniform(0.02, 0.08) * (0.5 + 0.5 * np.cos(theta - rng.uniform(0, 2 * np.pi))) ** 3
    _paint(image, _inside(heart - fat, pixel) * np.clip(fat / pixel, 0, 1), tissue["fat"])
    _paint(image, _inside(heart, pixel), tissue["myocardium"])
    rv_alpha = _inside(d_rv, pixel) * _inside(-d_epi, pixel) * np.clip(rv_width / pixel, 0, 1)
    _paint(image, rv_alpha, tissue["blood"] * rng.uniform(0.85, 1.0))
    _paint(image, _inside(d_endo, pixel), tissue["blood"])
    papillary = _papillary(rng, u, v, endo_radius, depth)
    _paint(image, _inside(papillary, pixel) * _inside(d_endo, pixel), tissue["myocardium"])

    mask = np.full(image.shape, BACKGROUND, dtype=np.uint8)
    mask[(d_rv < 0) & (d_epi >= 0)] = RV
    mask[d_epi < 0] = MYOCARDIUM
    mask[d_endo < 0] = LV  # ACDC counts papillary muscles in the cavity
    return mask


def _papillary(rng, u, v, endo_radius, depth) -> np.ndarray:
    """Two small dark discs inside the LV in basal and mid slices, for some patients."""
    if rng.random() < 0.3:
        return np.full(np.broadcast_shapes(u.shape, depth.shape), np.inf)
    first = rng.uniform(0, 2 * np.pi)
    size = endo_radius * rng.uniform(0.12, 0.2) * (depth < 0.75)
    discs = [
        np.hypot(u - 0.62 * endo_radius * np.cos(a), v - 0.62 * endo_radius * np.sin(a)) - size
        for a in (first, first + rng.uniform(1.6, 2.4))
    ]
    return np.where(size > 0, np.minimum(*discs), np.inf)


def _wobble(rng, shape, amplitude: float, pixel: float, scale: float = 0.12) -> np.ndarray:
    """A smooth random field of std ``amplitude`` varying over ``scale`` (grid units),
    correlated across neighbouring slices: added to a distance, it roughens an edge."""
    field = gaussian_filter(_noise(rng, shape), (1, scale / pixel, scale / pixel), truncate=2.5)
    return field * (amplitude / field.std())


def _acquire(rng, image: np.ndarray, x, y, blood: float) -> np.ndarray:
    """Texture, blur, a smooth multiplicative bias field and Rician noise, in scanner units."""
    texture = gaussian_filter(_noise(rng, image.shape), (0, 1.2, 1.2))
    image = image * (1 + rng.uniform(0.04, 0.12) * texture / texture.std())
    blur = rng.uniform(0.35, 0.8)
    image = gaussian_filter(image, (0, blur, blur))
    terms = np.stack([x, y, x * x, y * y, x * y])
    image = image * np.exp(np.tensordot(rng.normal(0, 0.2, 5), terms, axes=1))
    sigma = blood * rng.uniform(0.015, 0.06)
    real = image + sigma * _noise(rng, image.shape)
    imaginary = sigma * _noise(rng, image.shape)
    return np.hypot(real, imaginary) * rng.uniform(100, 1000)


def _noise(rng: np.random.Generator, shape) -> np.ndarray:
    """Standard normal noise from a child generator, so drawing it takes one number from
    ``rng`` whatever the shape: a patient's anatomy is the same at every image size."""
    return np.random.default_rng(rng.integers(2**63)).standard_normal(shape, dtype=np.float32)


def _ellipse(x, y, cx, cy, rx, ry, angle) -> np.ndarray:
    """Approximate signed distance to an ellipse: negative inside, accurate near the edge."""
    u, v = _rotate(x - cx, y - cy, angle)
    rho = np.hypot(u / rx, v / ry)
    gradient = np.hypot(u / rx**2, v / ry**2) / np.maximum(rho, 1e-9)
    return (rho - 1) / np.maximum(gradient, 1e-9)


def _rotate(u, v, angle):
    cos, sin = np.cos(angle), np.sin(angle)
    return cos * u + sin * v, -sin * u + cos * v


def _inside(distance, pixel: float) -> np.ndarray:
    """Anti-aliased membership: 1 well inside, 0.5 on the edge, 0 well outside."""
    return expit(-distance / (0.6 * pixel))


def _paint(image: np.ndarray, alpha: np.ndarray, value) -> None:
    """Composite a tissue of intensity ``value`` over ``image`` with coverage ``alpha``, in place."""
    image += alpha * (value - image)


def spacing(image_size: int, count: int) -> np.ndarray:
    """The (count, 3) spacing in mm of ``count`` generated slices at ``image_size``."""
    pixel = FIELD_OF_VIEW_MM / image_size
    return np.tile([pixel, pixel, SLICE_MM], (count, 1))
