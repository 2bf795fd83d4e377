"""One bounded YAML loader for every YAML a user or a pipeline hands us.

Why: YAML aliases let a 1 KB file describe a tree of 10^9 leaves ("billion laughs"). PyYAML builds
it cheaply (an alias is a shared reference), but everything downstream that walks the data (the
config's sha256 over canonical JSON, `copy.deepcopy`, the Kubernetes renderers, `yaml.safe_dump`)
expands it and hangs for minutes. So the composed node graph is measured before anything is
constructed: the number of nodes the document has once every alias is expanded is bounded, a
recursive alias is refused, and so is a document larger than `MAX_YAML_BYTES`. The check walks the
graph once with memoisation, so a bomb costs as much to refuse as its (small) source text.

Every reader of YAML input (training configs and `a.b=v` overrides, cluster profiles, manifests read
back, CRDs, rule files) goes through `load_yaml` / `load_yaml_all`, which raise `YAMLInputError`
naming the source (file:line where YAML says where).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

#: Largest YAML text accepted (configs and manifests are kilobytes; CRDs a few hundred KB).
MAX_YAML_BYTES = 8 * 1024 * 1024
#: Most nodes a document may have with every alias expanded (a real config has hundreds).
MAX_YAML_NODES = 1_000_000

_Loader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YAMLInputError(ValueError):
    """YAML input that is malformed or too large once expanded; the message names the source."""


def _expanded_size(root: yaml.Node, where: str, limit: int) -> int:
    """Nodes in the tree `root` describes with every alias expanded; refuses cycles and > limit."""
    sizes: dict[int, int] = {}
    active: set[int] = set()
    # Iterative post-order walk (a deep document must not hit Python's recursion limit).
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            active.discard(key)
            total = 1
            for child in _children(node):
                total += sizes[id(child)]
                if total > limit:
                    raise YAMLInputError(
                        f"{where}: the document expands to more than {limit:,} nodes through YAML aliases "
                        f"(near line {node.start_mark.line + 1}); refusing it"
                    )
            sizes[key] = total
            continue
        if key in sizes:
            continue
        if key in active:
            raise YAMLInputError(f"{where}:{node.start_mark.line + 1}: a YAML alias refers to itself; refusing it")
        active.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in active:
                raise YAMLInputError(
                    f"{where}:{child.start_mark.line + 1}: a YAML alias refers to itself; refusing it"
                )
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _text(source: str | bytes, where: str, max_bytes: int) -> str:
    size = len(source)
    if size > max_bytes:
        raise YAMLInputError(f"{where}: more than {max_bytes:,} bytes of YAML; refusing it")
    if isinstance(source, bytes):
        try:
            return source.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise YAMLInputError(f"{where}: not UTF-8 text (byte {exc.start}); YAML must be UTF-8") from None
    return source


def _error(exc: yaml.YAMLError, where: str) -> YAMLInputError:
    mark = getattr(exc, "problem_mark", None)
    at = f"{where}:{mark.line + 1}" if mark is not None else where
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return YAMLInputError(f"{at}: invalid YAML: {problem}")


def _documents(text: str, where: str, max_nodes: int) -> Iterator[Any]:
    loader = _Loader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                yield None
                continue
            _expanded_size(node, where, max_nodes)
            yield loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise _error(exc, where) from None
    finally:
        loader.dispose()


def load_yaml(
    source: str | bytes,
    where: str = "<yaml>",
    *,
    max_bytes: int = MAX_YAML_BYTES,
    max_nodes: int = MAX_YAML_NODES,
) -> Any:
    """The one document in `source` (None when empty), bounded; YAMLInputError naming `where`."""
    docs = list(_documents(_text(source, where, max_bytes), where, max_nodes))
    if len(docs) > 1:
        raise YAMLInputError(f"{where}: expected one YAML document, found {len(docs)}")
    return docs[0] if docs else None


def load_yaml_all(
    source: str | bytes,
    where: str = "<yaml>",
    *,
    max_bytes: int = MAX_YAML_BYTES,
    max_nodes: int = MAX_YAML_NODES,
) -> list[Any]:
    """Every document in `source`, each bounded like `load_yaml`."""
    return list(_documents(_text(source, where, max_bytes), where, max_nodes))


def read_yaml_file(path: str | Path, *, all_documents: bool = False, max_bytes: int = MAX_YAML_BYTES) -> Any:
    """Read and parse a YAML file: the size is checked before the whole file is read."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise YAMLInputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    loader = load_yaml_all if all_documents else load_yaml
    return loader(data, str(path), max_bytes=max_bytes)
