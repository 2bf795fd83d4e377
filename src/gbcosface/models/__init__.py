"""Face backbones: iresnet18/34/50/100/200 (insightface state-dict layout) and MobileFaceNet.

See docs/architecture.md ("Models, heads, losses") for the contract.
"""

from .io import (
    BackboneLoadError,
    extract_state_dict,
    infer_iresnet_arch,
    load_backbone,
    save_backbone,
    sidecar_path,
)
from .iresnet import IRESNET_LAYERS, IBasicBlock, IResNet
from .mobilefacenet import MobileFaceNet
from .registry import BACKBONE_NAMES, backbone_from_config, get_backbone

__all__ = [
    "BACKBONE_NAMES",
    "IRESNET_LAYERS",
    "BackboneLoadError",
    "IBasicBlock",
    "IResNet",
    "MobileFaceNet",
    "backbone_from_config",
    "extract_state_dict",
    "get_backbone",
    "infer_iresnet_arch",
    "load_backbone",
    "save_backbone",
    "sidecar_path",
]
