"""Per-image nuisance: everything about a photo that is not who is in it.

Why a frozen record drawn up front: rendering is then a pure function of (identity, nuisance,
placement), so an image is reproducible from its seed alone, and frames of one video (an IJB
"media") can share most of their nuisance and differ only by small perturbations.
Magnitudes scale with one number (`scale`, from the world's difficulty), so a harder world gets
stronger pose, light, blur, noise and occlusion at the same time.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Profile:
    """Ranges of nuisance for one kind of image set, at scale 1."""

    yaw_sigma: float = 18.0  # degrees, normal
    yaw_min: float = 0.0  # |yaw| at least this (profile views)
    yaw_max: float = 60.0
    pitch_sigma: float = 6.0
    smile: tuple[float, float] = (-0.4, 1.0)
    mouth_open_p: float = 0.3
    eye_close_p: float = 0.1
    light: float = 0.45  # directional strength
    brightness: tuple[float, float] = (0.65, 1.25)
    cast_sigma: float = 0.07
    blur_p: float = 0.35
    blur_max: float = 1.4  # gaussian sigma in px of a 112 face
    noise_max: float = 7.0
    jpeg: tuple[int, int] = (40, 95)
    occlusion_p: float = 0.15
    glasses_off_p: float = 0.15
    drift: float = 0.35  # appearance drift (see identity.drifted)
    landmark_noise: float = 1.0  # px of alignment error (aligned images)


PROFILES: dict[str, Profile] = {
    "train": Profile(),
    "lfw": Profile(yaw_sigma=12.0, occlusion_p=0.08),
    "cfp_frontal": Profile(yaw_sigma=5.0, yaw_max=12.0, occlusion_p=0.05),
    "cfp_profile": Profile(yaw_sigma=6.0, yaw_min=42.0, yaw_max=66.0, occlusion_p=0.05),
    "agedb": Profile(yaw_sigma=10.0, drift=1.6, glasses_off_p=0.4),
    "ijb": Profile(yaw_sigma=24.0, blur_p=0.5, blur_max=2.0, noise_max=10.0, occlusion_p=0.25,
                   drift=0.5),
}


@dataclass(frozen=True)
class Nuisance:
    """One photo's conditions. Angles in degrees; positions of occluders relative to the image."""

    yaw: float = 0.0
    pitch: float = 0.0
    smile: float = 0.0
    mouth_open: float = 0.0
    eye_close: float = 0.0
    brow_raise: float = 0.0
    light_angle: float = 0.0
    light: float = 0.0
    brightness: float = 1.0
    cast: tuple[float, float, float] = (1.0, 1.0, 1.0)
    blur: float = 0.0
    noise: float = 0.0
    jpeg: int = 95
    occlusion: int = 0  # 0 none, 1 patch, 2 bar, 3 mask over the lower face, 4 blob
    occ_box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # x, y, w, h in [0, 1]
    occ_color: tuple[float, float, float] = (0.0, 0.0, 0.0)
    glasses_off: bool = False
    background: tuple[float, float, float] = (128.0, 128.0, 128.0)
    background2: tuple[float, float, float] = (96.0, 96.0, 96.0)
    clothing: tuple[float, float, float] = (80.0, 80.0, 80.0)
    landmark_noise: tuple[float, ...] = (0.0,) * 10  # alignment error per coordinate, px
    detail_seed: int = 0  # pixel noise and background clutter


def sample_nuisance(rng: np.random.Generator, profile: Profile, scale: float) -> Nuisance:
    """Draw one photo's nuisance; `scale` multiplies the magnitudes (0 = studio photo)."""
    p = profile
    s = max(0.0, scale)
    yaw = rng.normal(0.0, p.yaw_sigma * s)
    if p.yaw_min > 0:  # profile views: a strong turn to either side
        yaw = rng.choice((-1.0, 1.0)) * (p.yaw_min + abs(rng.normal(0.0, p.yaw_sigma)))
    yaw = float(np.clip(yaw, -p.yaw_max, p.yaw_max))
    pitch = float(np.clip(rng.normal(0.0, p.pitch_sigma * s), -18.0, 18.0))
    smile = float(rng.uniform(*p.smile)) * min(1.0, 0.5 + 0.5 * s)
    mouth_open = float(rng.uniform(0.2, 1.0)) if rng.random() < p.mouth_open_p * min(1.0, s) else 0.0
    eye_close = float(rng.uniform(0.4, 1.0)) if rng.random() < p.eye_close_p * min(1.0, s) else 0.0
    brow_raise = float(rng.normal(0.0, 0.4 * min(1.0, s)))
    light_angle = float(rng.uniform(0.0, 360.0))
    light = float(rng.uniform(0.0, p.light * s))
    lo, hi = p.brightness
    mid = 0.5 * (lo + hi)
    brightness = float(mid + (rng.uniform(lo, hi) - mid) * min(1.5, s))
    cast = tuple(float(c) for c in np.clip(1.0 + rng.normal(0.0, p.cast_sigma * s, 3), 0.6, 1.4))
    blur = float(rng.uniform(0.3, p.blur_max * s)) if rng.random() < min(0.95, p.blur_p * s) else 0.0
    noise = float(rng.uniform(0.0, p.noise_max * s))
    qlo, qhi = p.jpeg
    jpeg = int(round(qhi - (qhi - qlo) * min(1.0, s) * rng.random()))
    occlusion = 0
    occ_box = (0.0, 0.0, 0.0, 0.0)
    occ_color = (0.0, 0.0, 0.0)
    if rng.random() < min(0.9, p.occlusion_p * s):
        occlusion = int(rng.integers(1, 5))
        w, h = rng.uniform(0.12, 0.4, 2)
        x, y = rng.uniform(0.0, 1.0 - w), rng.uniform(0.0, 1.0 - h)
        occ_box = (float(x), float(y), float(w), float(h))
        occ_color = tuple(float(c) for c in rng.uniform(0, 255, 3))
    glasses_off = bool(rng.random() < p.glasses_off_p * min(1.5, s))
    bg = rng.uniform(20, 235, 3)
    bg2 = np.clip(bg + rng.normal(0, 40, 3), 0, 255)
    clothing = rng.uniform(10, 245, 3)
    lm_noise = rng.normal(0.0, p.landmark_noise * s, 10)
    return Nuisance(
        yaw=yaw, pitch=pitch, smile=smile, mouth_open=mouth_open, eye_close=eye_close,
        brow_raise=brow_raise, light_angle=light_angle, light=light, brightness=brightness,
        cast=cast, blur=blur, noise=noise, jpeg=jpeg, occlusion=occlusion, occ_box=occ_box,
        occ_color=occ_color, glasses_off=glasses_off,
        background=tuple(float(c) for c in bg), background2=tuple(float(c) for c in bg2),
        clothing=tuple(float(c) for c in clothing),
        landmark_noise=tuple(float(v) for v in lm_noise),
        detail_seed=int(rng.integers(0, 2**62)),
    )


def perturb_frame(base: Nuisance, rng: np.random.Generator, scale: float) -> Nuisance:
    """Another frame of the same video: the same scene with a small change of pose and expression."""
    s = max(0.0, scale)
    return dataclasses.replace(
        base,
        yaw=float(np.clip(base.yaw + rng.normal(0.0, 4.0 * s), -70.0, 70.0)),
        pitch=float(np.clip(base.pitch + rng.normal(0.0, 2.0 * s), -20.0, 20.0)),
        smile=float(np.clip(base.smile + rng.normal(0.0, 0.15), -1.0, 1.0)),
        brow_raise=float(base.brow_raise + rng.normal(0.0, 0.1)),
        blur=float(max(0.0, base.blur + rng.normal(0.0, 0.2 * s))),
        landmark_noise=tuple(float(v) for v in rng.normal(0.0, 1.0 * s, 10)),
        detail_seed=int(rng.integers(0, 2**62)),
    )
