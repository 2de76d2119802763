"""Reading a search-space file: the path rule, a YAML loader that refuses duplicate keys, and the
checks (schema, sampler and pruner options, every corner of the space a valid TrainConfig), each
error naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from pipeline.space.schema import SearchSpace, SpaceError
from pipeline.space.translate import space_corners

__all__ = ["SEARCH_SPACES", "load_space", "space_file"]

SEARCH_SPACES = Path(__file__).resolve().parent.parent / "search_spaces"  # in the package: the wheel has them


def space_file(path: str | Path) -> Path:
    """A search-space path as given, or for a bare name (`quick`) `pipeline/search_spaces/quick.yaml`."""
    path = Path(path)
    return path if path.suffix or path.exists() else SEARCH_SPACES / f"{path}.yaml"


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML keeps the last, silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_space(path: str | Path) -> SearchSpace:
    """Read and check a YAML search space (see `space_file` for the path)."""
    path = space_file(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except OSError as exc:
        raise SpaceError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise SpaceError(f"{path}: not a text file (byte {exc.start} is not UTF-8): expected a YAML "
                         "search space") from None
    except yaml.YAMLError as exc:
        raise SpaceError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise SpaceError(f"{path}: expected a mapping of keys (dataset, params, ...), found {type(raw).__name__}")
    if "name" in raw:
        raise SpaceError(f"{path}: name: unknown key (the name is the file's stem)")
    try:
        space = SearchSpace(**raw, name=path.stem)
    except ValidationError as exc:
        first = exc.errors()[0]
        # pydantic's location includes union members and tags ("tagged-union[...]", "int"): keep the keys.
        where = ".".join(str(p) for p in first["loc"] if isinstance(p, int) or (
            p.isidentifier() and not p.endswith("Param") and p not in ("int", "float", "categorical", "fixed")))
        value = f" (got {first['input']!r})" if first["type"] not in ("missing", "value_error") else ""
        raise SpaceError(f"{path}: {where or 'top level'}: {first['msg']}{value}") from None
    for what, make in (("sampler", lambda: space.make_sampler(0)), ("pruner", space.make_pruner)):
        try:
            make()
        except (TypeError, ValueError) as exc:
            raise SpaceError(f"{path}: {what}.options: {exc}") from None
    _check_configs(space, path)
    return space


def _check_configs(space: SearchSpace, path: Path) -> None:
    """Every corner of the space must make a valid TrainConfig (types, ranges, combinations such
    as no weight decay with sparse_sgd): checked before any training."""
    try:
        for _ in space_corners(space):
            pass
    except ValueError as exc:
        raise SpaceError(f"{path}: params: {exc}") from None
