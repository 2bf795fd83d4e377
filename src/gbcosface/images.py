"""The one image name that the build, the compiled pipeline and the rendered jobs share.

Why one image for steps and pods: the evaluation step needs the same CUDA torch as training, and
one image means one thing to build, scan and pull (docs/pipeline.md). `make build-images` and
`make compile` both take REGISTRY and TAG and form the reference with `image_ref`'s rule; a test
checks that the Makefile's defaults give `DEFAULT_IMAGE`.
"""

from __future__ import annotations

from gbcosface import __version__

DEFAULT_REGISTRY = "ghcr.io/gbcosface"
IMAGE_NAME = "gbcosface"


def image_ref(registry: str = DEFAULT_REGISTRY, tag: str = __version__) -> str:
    """`<registry>/gbcosface:<tag>`."""
    registry = registry.rstrip("/")
    if not registry or not tag:
        raise ValueError("an image reference needs a registry and a tag")
    return f"{registry}/{IMAGE_NAME}:{tag}"


DEFAULT_IMAGE = image_ref()
