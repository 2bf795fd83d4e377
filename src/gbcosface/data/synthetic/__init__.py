"""The synthetic face world: seeded face-like images written in the real dataset formats.

Why: the demo and the tests need a face dataset that exercises every real format (insightface
RecordIO, .bin pairs, IJB-C layout) and is hard enough that training visibly improves verification,
without downloading anything. See world.py for the layout and render.py for the drawing.
"""

from gbcosface.data.synthetic.identity import Identity, drifted, make_identity
from gbcosface.data.synthetic.nuisance import PROFILES, Nuisance, Profile, sample_nuisance
from gbcosface.data.synthetic.world import SYNTH_VERSION, WorldSpec, generate_world, load_world

__all__ = [
    "PROFILES",
    "SYNTH_VERSION",
    "Identity",
    "Nuisance",
    "Profile",
    "WorldSpec",
    "drifted",
    "generate_world",
    "load_world",
    "make_identity",
    "sample_nuisance",
]
