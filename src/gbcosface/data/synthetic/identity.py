"""Identity parameters of the synthetic face world.

Why a latent in [0, 1]^K: every identity is a vector of uniform draws, one per named parameter
(face shape, skin, hair, eyes, brows, nose, lips, beard, glasses, ears, marks) plus a texture seed.
Difficulty is then one operation: pulling every latent toward 0.5 (the "average face") by a factor
`spread` makes identities look alike, and categorical parameters (hair style, beard, glasses) collapse
toward their middle categories at the same time. An identity depends only on (world seed, index),
so any process can rebuild any identity without shared state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Named parameters, in a fixed order (the order is part of the world's definition: changing it
# changes every identity, so bump SYNTH_VERSION in world.py when editing this table).
# Each entry: (name, low, high) for a continuous parameter mapped linearly from the latent,
# or (name, number_of_categories) for a categorical one (the latent's bin).
PARAMS: tuple[tuple, ...] = (
    # face shape
    ("face_w", 0.86, 1.14),
    ("face_h", 0.90, 1.10),
    ("jaw_w", 0.55, 0.95),
    ("chin_sharp", 1.6, 3.2),
    ("forehead_h", 0.85, 1.15),
    ("cheek", -1.0, 1.0),
    ("face_dy", -3.0, 3.0),
    ("neck_w", 0.45, 0.75),
    # skin
    ("skin_l", 0.0, 1.0),
    ("skin_hue", -1.0, 1.0),
    ("skin_sat", 0.7, 1.3),
    ("tex_strength", 0.0, 1.0),
    ("blush", 0.0, 1.0),
    ("freckles", 0.0, 1.0),
    # hair
    ("hair_style", 7),
    ("hair_l", 0.0, 1.0),
    ("hair_hue", 0.0, 1.0),
    ("hairline", -1.0, 1.0),
    ("hair_volume", 0.0, 1.0),
    ("hair_length", 0.0, 1.0),
    ("hair_part", -1.0, 1.0),
    ("fringe", 0.0, 1.0),
    # eyes
    ("eye_w", 0.8, 1.2),
    ("eye_h", 0.65, 1.35),
    ("eye_tilt", -1.0, 1.0),
    ("iris_size", 0.7, 1.1),
    ("iris_hue", 0.0, 1.0),
    ("iris_l", 0.0, 1.0),
    ("eyelid", 0.0, 1.0),
    ("eye_dx", -1.0, 1.0),
    # brows
    ("brow_thick", 0.5, 1.6),
    ("brow_arch", 0.0, 1.0),
    ("brow_len", 0.8, 1.2),
    ("brow_dark", 0.0, 1.0),
    ("brow_h", 0.8, 1.25),
    ("brow_tilt", -1.0, 1.0),
    # nose
    ("nose_w", 0.7, 1.3),
    ("nose_len", 0.8, 1.2),
    ("nostril", 0.0, 1.0),
    ("bridge", 0.0, 1.0),
    ("nose_dy", -1.0, 1.0),
    # mouth
    ("lip_w", 0.85, 1.15),
    ("lip_upper", 0.5, 1.5),
    ("lip_lower", 0.5, 1.5),
    ("lip_hue", 0.0, 1.0),
    ("lip_l", 0.0, 1.0),
    ("mouth_dy", -1.0, 1.0),
    # beard: none, none, stubble, moustache, goatee, full, none
    ("beard", 7),
    ("beard_density", 0.3, 1.0),
    ("beard_l", 0.0, 1.0),
    ("beard_len", 0.0, 1.0),
    # glasses: none x4, thin, thick, round
    ("glasses", 7),
    ("frame_hue", 0.0, 1.0),
    ("frame_l", 0.0, 1.0),
    ("lens_size", 0.85, 1.15),
    # ears
    ("ear_size", 0.8, 1.2),
    ("ear_dy", -1.0, 1.0),
    # marks and age
    ("moles", 4),
    ("wrinkles", 0.0, 1.0),
    ("age", 0.0, 1.0),
    ("mark_hue", 0.0, 1.0),
)

PARAM_NAMES: tuple[str, ...] = tuple(p[0] for p in PARAMS)
NUM_PARAMS = len(PARAMS)
_INDEX = {name: i for i, name in enumerate(PARAM_NAMES)}

# Stream tags for np.random.SeedSequence: identity latents and per-image draws never share a stream.
STREAM_IDENTITY = 1


@dataclass(frozen=True)
class Identity:
    """One synthetic person: the latent (after the pull toward the average) and a texture seed."""

    index: int
    latent: np.ndarray  # (NUM_PARAMS,) float64 in [0, 1]
    texture_seed: int

    def __getitem__(self, name: str) -> float:
        """The parameter's value: continuous in [low, high], categorical as an int category."""
        return param_value(name, float(self.latent[_INDEX[name]]))

    def fingerprint(self) -> str:
        """A short hex digest of the parameters, to show that two identities differ."""
        import hashlib

        h = hashlib.sha256(self.latent.astype("<f8").tobytes())
        h.update(int(self.texture_seed).to_bytes(8, "little"))
        return h.hexdigest()[:16]


def param_value(name: str, u: float) -> float:
    """Map a latent in [0, 1] to the named parameter's range (or category)."""
    spec = PARAMS[_INDEX[name]]
    if len(spec) == 2:
        n = spec[1]
        return float(min(n - 1, int(u * n)))
    return spec[1] + (spec[2] - spec[1]) * u


def make_identity(seed: int, index: int, spread: float) -> Identity:
    """Identity `index` of the world with `seed`; `spread` in (0, 1] scales distance to the average.

    Why SeedSequence([seed, stream, index]): identities are independent of how many exist, of the
    order they are generated in, and of the process that draws them.
    """
    if not 0.0 < spread <= 1.0:
        raise ValueError(f"spread must be in (0, 1], got {spread}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, STREAM_IDENTITY, index]))
    raw = rng.random(NUM_PARAMS)
    texture_seed = int(rng.integers(0, 2**62))
    latent = 0.5 + spread * (raw - 0.5)
    return Identity(index=index, latent=latent, texture_seed=texture_seed)


def drifted(identity: Identity, rng: np.random.Generator, amount: float) -> Identity:
    """The same person with appearance drift (age, hair, beard, glasses...) for one image.

    Why: real photos of one person vary in more than pose and light (haircut, beard, glasses, age);
    the agedb-like set uses a large amount. The texture seed (skin marks) stays: it is who they are.
    """
    if amount <= 0:
        return identity
    latent = identity.latent.copy()
    names = ("hair_l", "hair_volume", "hair_length", "fringe", "hairline", "beard_density",
             "beard_len", "wrinkles", "age", "cheek", "lip_l", "blush", "brow_dark", "frame_hue")
    idx = [_INDEX[n] for n in names]
    latent[idx] = np.clip(latent[idx] + rng.normal(0.0, 0.15 * amount, len(idx)), 0.0, 1.0)
    # occasionally a categorical change (new beard or glasses), more likely with more drift
    for name in ("beard", "glasses", "hair_style"):
        if rng.random() < 0.15 * amount:
            i = _INDEX[name]
            latent[i] = float(np.clip(latent[i] + rng.choice((-0.25, 0.25)), 0.0, 1.0))
    return Identity(index=identity.index, latent=latent, texture_seed=identity.texture_seed)
