"""Configs are plain nested dicts, resolved in layers: schema defaults <- the task's recipe <- a YAML
file <- command-line overrides. Every layer is checked against the typed schema (``schema.py``), so an
unknown key or a wrong type is one error line naming the layer it came from.

A cell's identity is the hash of the part of the config that can change its result, so a re-run with
the same settings finds its finished cells and a run with other settings never overwrites them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .components import component_sections
from .errors import UsageError
from .methods import method_sections
from .registry import EXECUTORS
from .schema import RUN, Section, deep_merge, flatten
from .tasks import Task
from .tasks.base import SAFE_LOADER


class _StrictLoader(SAFE_LOADER):  # type: ignore[misc,valid-type]
    """``yaml.safe_load`` that refuses a key given twice in one mapping (plain YAML keeps the last one, so a
    second ``teacher:`` block silently drops the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise UsageError(
                    f"key {key!r} appears twice in one mapping (lines {seen[key]} and {line}); merge the two"
                )
            try:
                seen[key] = line
            except TypeError:  # an unhashable key: PyYAML's own error follows
                pass
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; any failure is a UsageError naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise UsageError(f"config {path} is not UTF-8 text (byte {exc.start}, line {line})") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except UsageError as exc:
        raise UsageError(f"config {path}: {exc}") from None
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid YAML"
        raise UsageError(f"config {path} is not valid YAML: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"config {path} must be a YAML mapping, got {type(data).__name__}")
    return data


def set_dotted(cfg: dict[str, Any], dotted: str, value: Any) -> None:
    """``set_dotted(cfg, "teacher.lr", 0.1)`` sets ``cfg["teacher"]["lr"]``, creating dicts as needed."""
    keys = dotted.split(".")
    node = cfg
    for key in keys[:-1]:
        nxt = node.get(key)
        if not isinstance(nxt, dict):
            nxt = node[key] = {}
        node = nxt
    node[keys[-1]] = value


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``key.sub=value`` (value read as YAML, so numbers and lists get their types)."""
    if "=" not in text:
        raise UsageError(f"--set expects KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise UsageError(f"--set expects KEY=VALUE, got {text!r}")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
    return key, value


def config_hash(obj: Any, length: int = 12) -> str:
    """Stable short hash of a JSON-able object (key order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def executor_sections() -> dict[str, Section]:
    """The config section of every registered executor that declares one (``config_section``)."""
    return {name: cls.config_section for name, cls in EXECUTORS.items() if getattr(cls, "config_section", None)}


def full_schema(task: Task) -> Section:
    """The schema of a run of ``task``: the common sections, the task's data and role sections, one section
    per registered KD method with parameters, one per registered executor with a config section and one per
    registered cell component (``lskd_bench.components``)."""
    return RUN.extend(
        {
            "data": task.data_schema,
            "teacher": task.train_schema,
            "student": task.train_schema,
            **executor_sections(),
            **task.extra_sections,
            **method_sections(),
            **component_sections(),
        }
    )


@dataclass(frozen=True)
class Resolved:
    """A resolved, checked config and where each value came from."""

    cfg: dict[str, Any]
    provenance: dict[str, str]  # dotted key -> the layer that set it


def resolve_layers(task: Task, layers: list[tuple[str, Mapping[str, Any]]]) -> Resolved:
    """Merge ``layers`` (label, partial config) over the schema defaults; check each layer, then the result."""
    schema = full_schema(task)
    cfg: dict[str, Any] = schema.defaults()
    provenance = dict.fromkeys(flatten(cfg), "default")
    for label, layer in layers:
        if not layer:
            continue
        try:
            schema.check(layer)
        except UsageError as exc:
            raise UsageError(f"{exc} ({label})") from None
        cfg = deep_merge(cfg, layer)
        for key in flatten(layer):
            provenance[key] = label
            for k in [k for k in provenance if k.startswith(key + ".")]:  # a layer set a whole section
                provenance[k] = label
    return Resolved(schema.check(cfg), provenance)


def describe_config(resolved: Resolved) -> str:
    """``key: value  # layer`` lines of a resolved config, in schema order."""
    flat = flatten(resolved.cfg)
    width = max((len(k) + len(_yaml_scalar(v)) for k, v in flat.items()), default=0) + 4
    lines = []
    for key, value in flat.items():
        text = f"{key}: {_yaml_scalar(value)}"
        lines.append(f"{text:<{width}}# {resolved.provenance.get(key, 'default')}")
    return "\n".join(lines) + "\n"


def _yaml_scalar(v: Any) -> str:
    return yaml.safe_dump(v, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()
