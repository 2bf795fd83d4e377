"""Save and load backbones: the exported model, and released checkpoints in the official layout.

Why these rules: an exported backbone is a plain state dict (tensors only, so `torch.load(...,
weights_only=True)` can read it without executing code) in the insightface key layout, plus a JSON
sidecar with the `get_backbone` kwargs so it can be rebuilt without the training config. Released
checkpoints come wrapped in many ways (DDP's "module." prefix, a "state_dict"/"model"/"backbone"
entry, torch.compile's "_orig_mod."); they are unwrapped, then loaded strictly, and a mismatch is an
error that names the file and the offending keys.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .iresnet import IRESNET_LAYERS
from .mobilefacenet import MobileFaceNet, is_legacy_mobilefacenet_state, legacy_mobilefacenet_state
from .registry import get_backbone

ARCH_KEYS = ("name", "embedding_size", "dropout", "width", "layers", "stem_stride", "fp16", "train_embedding_scale")
#: Bounds on sidecar numbers, checked before anything is built (a sidecar is data from a download:
#: `embedding_size: 1e12` must not allocate terabytes, nor `layers: [1e9, ...]` loop for hours).
MAX_ARCH_INT = 1 << 16
MAX_TOTAL_BLOCKS = 1000
_NESTING_KEYS = ("state_dict", "model", "backbone")
_PREFIXES = ("module.", "_orig_mod.")


class BackboneLoadError(ValueError):
    """A backbone file cannot be read or does not match the architecture; names the file."""


def sidecar_path(path: str | Path) -> Path:
    """Where the architecture JSON of a backbone file lives (`backbone.pt` -> `backbone.json`)."""
    return Path(path).with_suffix(".json")


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Write through a temporary file in the same directory, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DDP/DataParallel and torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def _check_arch(arch: Mapping[str, Any], where: str) -> dict[str, Any]:
    unknown = sorted(set(arch) - set(ARCH_KEYS))
    if unknown:
        raise BackboneLoadError(f"{where}: unknown architecture keys {unknown} (allowed: {', '.join(ARCH_KEYS)})")
    if not isinstance(arch.get("name"), str):
        raise BackboneLoadError(f"{where}: the architecture needs a backbone 'name'")
    for key in ("embedding_size", "width", "stem_stride"):
        value = arch.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or not 1 <= value <= MAX_ARCH_INT):
            raise BackboneLoadError(f"{where}: architecture key {key!r} must be an integer in 1..{MAX_ARCH_INT}, "
                                    f"got {str(value)[:40]}")
    layers = arch.get("layers")
    if layers is not None:
        if (not isinstance(layers, list | tuple) or len(layers) > 16
                or not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= MAX_TOTAL_BLOCKS
                           for n in layers) or sum(layers) > MAX_TOTAL_BLOCKS):
            raise BackboneLoadError(f"{where}: architecture key 'layers' must be at most 16 block counts summing to "
                                    f"at most {MAX_TOTAL_BLOCKS}, got {str(layers)[:80]}")
    dropout = arch.get("dropout")
    if dropout is not None and (isinstance(dropout, bool) or not isinstance(dropout, int | float)
                                or not 0 <= dropout < 1):
        raise BackboneLoadError(f"{where}: architecture key 'dropout' must be a number in [0, 1), got {dropout!r}")
    return dict(arch)


def _check_size(spec: dict[str, Any], path: Path, where: str) -> None:
    """Refuse an architecture with more parameters than the file could hold (built on the meta device:
    nothing is allocated). Each saved parameter takes at least 2 bytes (float16)."""
    try:
        with torch.device("meta"):
            probe = get_backbone(**spec)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise BackboneLoadError(f"{where}: bad architecture {spec}: {exc}") from None
    numel = sum(p.numel() for p in probe.parameters())
    size = path.stat().st_size
    if 2 * numel > size + (1 << 20):
        raise BackboneLoadError(
            f"{where}: the architecture has {numel:,} parameters ({4 * numel / 1e9:.1f} GB in float32), more than "
            f"{path} ({size:,} bytes) can hold; refusing to build it"
        )


def save_backbone(model: nn.Module, path: str | Path, arch: Mapping[str, Any] | None = None) -> Path:
    """Write `model`'s state dict to `path` and its architecture to `path.with_suffix('.json')`.

    `arch` defaults to the kwargs recorded by `get_backbone` (`model.arch`). Both files are written
    atomically; tensors are detached CPU copies, so the file holds nothing but tensors.
    """
    path = Path(path)
    model = unwrap_model(model)
    if arch is None:
        arch = getattr(model, "arch", None)
        if arch is None:
            raise ValueError(f"{path}: no arch given and the model was not built by get_backbone")
    arch = _check_arch(arch, str(path))
    state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    _atomic_write(path, lambda fh: torch.save(state, fh))
    text = json.dumps(arch, indent=2, sort_keys=True) + "\n"
    _atomic_write(sidecar_path(path), lambda fh: fh.write(text.encode()))
    return path


def extract_state_dict(obj: Any, where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The backbone tensors of a loaded checkpoint: unnest and strip DDP/compile prefixes."""
    for _ in range(3):
        if isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
            nested = next((obj[k] for k in _NESTING_KEYS if isinstance(obj.get(k), Mapping)), None)
            if nested is None:
                break
            obj = nested
    if not isinstance(obj, Mapping) or not obj:
        raise BackboneLoadError(f"{where}: not a state dict (got {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise BackboneLoadError(f"{where}: entries that are not tensors: {bad[:5]}")
    state = {}
    for key, value in obj.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        state[key] = value
    return state


def infer_iresnet_arch(state: Mapping[str, torch.Tensor]) -> dict[str, Any] | None:
    """Rebuild the get_backbone kwargs of an iresnet-layout state dict (None if it is not one).

    Blocks per stage come from the layerK.N keys, the width from conv1, the embedding size from fc,
    and the stem stride from fc's input size (8w * 7 * 7 at stride 1, 8w * 4 * 4 at stride 2).
    """
    needed = ("conv1.weight", "fc.weight", "features.weight")
    if any(k not in state for k in needed):
        return None
    counts = []
    for stage in range(1, 5):
        idx = {int(m.group(1)) for k in state if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        if not idx:
            return None
        counts.append(max(idx) + 1)
    width = int(state["conv1.weight"].shape[0])
    emb, fc_in = (int(n) for n in state["fc.weight"].shape)
    spatial = fc_in // (8 * width)
    stem_stride = {49: 1, 16: 2}.get(spatial)
    if stem_stride is None or fc_in % (8 * width):
        return None
    name = next((n for n, blocks in IRESNET_LAYERS.items() if list(blocks) == counts), None)
    return {
        "name": name or "iresnet18",
        "embedding_size": emb,
        "width": None if width == 64 else width,
        "layers": None if name else counts,
        "stem_stride": stem_stride,
    }


def _load_refusal(path: Path, exc: Exception) -> str:
    """Why `path` was not loaded, in our words: torch's weights_only message advises setting
    `weights_only=False`, i.e. running the code the file names, which is exactly what must not happen."""
    text = str(exc)
    if "Weights only load failed" in text or "WeightsUnpickler" in text:
        detail = next((line.strip() for line in text.splitlines()
                       if "GLOBAL" in line or "Unsupported" in line or "WeightsUnpickler error" in line), "")
        detail = re.sub(r"^WeightsUnpickler error:\s*", "", detail)[:200]
        return (f"{path}: refused as unsafe: it is not plain tensors, and loading it would run code the file "
                f"names{f' ({detail})' if detail else ''}; only state dicts of tensors are loaded")
    first = text.strip().splitlines()[0][:200] if text.strip() else type(exc).__name__
    return f"{path}: not a readable PyTorch file ({first})"


def load_backbone(path: str | Path, name: str | None = None, fp16: bool = False, **arch: Any) -> nn.Module:
    """Build a backbone and load `path` into it strictly; returns it in eval mode on the CPU.

    The architecture comes from the JSON sidecar when present, then `name`/`arch` override it;
    with neither, an iresnet architecture is inferred from the keys (released checkpoints).
    `fp16` (the trunk autocast flag) is the caller's choice, never the sidecar's: a backbone trained
    with `fp16: true` is still evaluated in float32 unless fp16 is asked for, as both official
    evaluation scripts do. Keys of this project's earlier MobileFaceNet layout are renamed.
    """
    path = Path(path)
    if not path.is_file():
        raise BackboneLoadError(f"{path}: no such backbone file")
    spec: dict[str, Any] = {}
    side = sidecar_path(path)
    if side.is_file() and side != path:
        try:
            spec = json.loads(side.read_text())
        except (OSError, ValueError) as exc:
            raise BackboneLoadError(f"{side}: cannot read the architecture JSON: {exc}") from None
        if not isinstance(spec, dict):
            raise BackboneLoadError(f"{side}: the architecture JSON must be an object")
    if name is not None:
        spec["name"] = name
    spec.update(arch)
    spec["fp16"] = bool(fp16)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt file, or one that needs code to unpickle
        raise BackboneLoadError(_load_refusal(path, exc)) from None
    state = extract_state_dict(obj, str(path))
    if "name" not in spec:
        inferred = infer_iresnet_arch(state)
        if inferred is None:
            raise BackboneLoadError(f"{path}: no architecture sidecar {side.name} and no name given, "
                                    "and the keys are not an iresnet layout")
        spec = {**inferred, **spec}
    spec = _check_arch(spec, str(side if side.is_file() else path))
    _check_size(spec, path, str(side if side.is_file() else path))
    try:
        model = get_backbone(**spec)
    except (TypeError, ValueError) as exc:
        raise BackboneLoadError(f"{path}: bad architecture {spec}: {exc}") from None
    if isinstance(model, MobileFaceNet) and is_legacy_mobilefacenet_state(state):
        state = legacy_mobilefacenet_state(state, model)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise BackboneLoadError(f"{path}: does not fit {spec['name']}: {exc}") from None
    if result.missing_keys or result.unexpected_keys:
        raise BackboneLoadError(
            f"{path}: does not fit {spec['name']} {spec}: "
            f"{len(result.missing_keys)} missing keys {result.missing_keys[:8]}, "
            f"{len(result.unexpected_keys)} unexpected keys {result.unexpected_keys[:8]}"
        )
    return model.eval()
