"""The options that make up a run's config (``run``, ``config``, ``check-data``), generated from the schema.

Every key that can be set by an option declares it once, in its ``schema.Field`` (``flags=(Flag("--epochs"),)``):
the option's type, bounds, choices, default and help come from that Field, and the value given lands on that key
(on every key a shared Field sits at: ``--epochs`` sets ``teacher.epochs`` and ``student.epochs``). The schemas
read are those of every registered task (``config.full_schema``: the common sections, the task's, each method's
and each executor's), so a task, method or executor plugin that declares a ``Flag`` gets its option without a
line here. The few options that are not a config key (``--task``, ``--config``, ``--set``...) are written below.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Resolved, full_schema, load_yaml, parse_override, set_dotted
from ..errors import UsageError
from ..registry import EXECUTORS
from ..runners.grid import resolve
from ..schema import RUN, Field, Flag, Section, default_text
from ..tasks import get_task, task_names
from .common import list_of

_DEFAULT = re.compile(r"\{default(?::([\w.]+))?\}")


@dataclass(frozen=True)
class Option:
    """One generated option: its ``Flag``, the ``Field`` it sets and every key it sets (``schema``: where the
    Field was found, for the defaults its help names)."""

    flag: Flag
    field: Field
    keys: tuple[str, ...]
    schema: Section

    @property
    def dest(self) -> str:
        return self.flag.name.removeprefix("--").replace("-", "_")

    def value(self, raw: Any) -> Any:
        """The config value of what argparse stored."""
        if self.flag.const is not None:
            return self.flag.const
        if isinstance(self.field.type, list):
            return list_of(self.field.type[0], self.flag.name)(raw)
        return str(Path(raw).absolute()) if self.flag.path else raw

    def help(self) -> str:
        f, field = self.flag, self.field
        text = f.help or field.help
        said = []
        if isinstance(field.type, list) and f.const is None:
            said.append("comma-separated" + (f" from {{{','.join(map(str, field.choices))}}}" if field.choices else ""))
        if f.show_default:
            said.append(f"default: {default_text(self.schema, self.keys[0])}")
        if said:
            text += f" ({'; '.join(said)})"
        if f.note:
            text += f"; {f.note}"
        if f.const is not None:
            const = str(f.const).lower() if isinstance(f.const, bool) else str(f.const)
            text += " [" + ", ".join(f"{k}: {const}" for k in self.keys) + "]"
        else:
            text += f" [{', '.join(self.keys)}]"
        text = _DEFAULT.sub(lambda m: default_text(self.schema, m[1] or self.keys[0]), text)
        return text.replace("%", "%%")  # argparse formats help with %


def _flagged(section: Section, path: str = "") -> Iterator[tuple[str, Field]]:
    """(dotted key, Field) of every Field under ``section`` that declares a Flag, in schema order."""
    for key, node in section.fields.items():
        dotted = f"{path}.{key}" if path else key
        if isinstance(node, Section):
            yield from _flagged(node, dotted)
        elif node.flags:
            yield dotted, node


def schema_options(schemas: Iterable[Section] | None = None) -> list[Option]:
    """The options the Flags of ``schemas`` declare (default: the full schema of every registered task), one per
    option name, in schema order. The same name met again (another task's ``data.root``, the other role's
    ``epochs``) adds its key; met with another Flag, or on a Field of another type, it is a mistake in the
    schema (ValueError)."""
    found: dict[str, Option] = {}
    for schema in list(schemas) if schemas is not None else [full_schema(get_task(n)) for n in task_names()]:
        for dotted, field in _flagged(schema):
            parent = dotted.rpartition(".")[0]
            for flag in field.flags:
                if flag.under is not None and flag.under != parent:
                    continue
                if field.type is bool and flag.const is None:
                    raise ValueError(f"{flag.name} ({dotted}): a true/false key's Flag needs a const")
                seen = found.get(flag.name)
                if seen is None:
                    found[flag.name] = Option(flag, field, (dotted,), schema)
                    continue
                if seen.flag != flag or seen.field.type != field.type:
                    raise ValueError(f"{flag.name} is declared twice differently ({seen.keys[0]} and {dotted})")
                if dotted not in seen.keys:
                    found[flag.name] = Option(flag, seen.field, (*seen.keys, dotted), seen.schema)
    return list(found.values())


def add_config_options(parser: argparse.ArgumentParser, schemas: Iterable[Section] | None = None) -> None:
    """The options that make up a run's config: the hand-written ones that are not a config key, then one per
    schema Flag (``schema_options``), whose parsed values ``run_overrides`` turns into the command-line layer."""
    parser.add_argument(
        "--task",
        help=f"task name (default: {default_text(RUN, 'task')}, or the config file's 'task'); see 'lskd-bench tasks'",
    )
    parser.add_argument("--config", help="YAML config merged over the task's defaults")
    parser.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="any config value, e.g. --set student.epochs=5 (repeatable)"
    )
    parser.add_argument(
        "--runner-profile",
        help="executor profile YAML (runners/slurm.yaml: partition, GPUs, time...); implies --executor slurm",
    )
    parser.add_argument("--wait", action="store_true", help="slurm: block with a progress bar until every cell settled")
    options = schema_options(schemas)
    group = parser.add_argument_group(
        "config options", "each sets the config key(s) in [ ] (over the task's recipe and --config; --set wins)"
    )
    for opt in options:
        kind = opt.field.type
        if opt.flag.const is not None:
            group.add_argument(
                opt.flag.name, dest=opt.dest, action="store_const", const=opt.flag.const, help=opt.help()
            )
            continue
        metavar = opt.flag.metavar
        if metavar is None and opt.field.choices and not isinstance(kind, list):
            metavar = "{" + ",".join(map(str, opt.field.choices)) + "}"
        group.add_argument(
            opt.flag.name,
            dest=opt.dest,
            type=kind if kind in (int, float) else None,  # a list is split (and checked) in run_overrides
            metavar=metavar,
            help=opt.help(),
        )
    parser.set_defaults(config_options=tuple(options))


def run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The command-line layer of the config: each given option's value on its key(s), then ``--set``."""
    o: dict[str, Any] = {}
    for opt in args.config_options:
        raw = getattr(args, opt.dest)
        if raw is not None:
            value = opt.value(raw)
            for key in opt.keys:
                set_dotted(o, key, value)
    if o.get("nproc_per_node", 1) > 1 and "executor" not in o:  # DDP asked for on the command line: torchrun
        o["executor"] = "torchrun"
    for item in args.set or []:
        key, value = parse_override(item)
        set_dotted(o, key, value)
    return o


def profile_layer(path: str, executor: str | None) -> tuple[str, dict[str, Any]]:
    """``--runner-profile FILE``: the config section of ``executor`` (default: the one registered executor
    that has a section, the slurm executor), as a config layer that also selects the executor."""
    if executor is None:
        with_section = [n for n, cls in EXECUTORS.items() if getattr(cls, "config_section", None)]
        if len(with_section) != 1:
            raise UsageError(f"--runner-profile needs --executor (executors with a profile: {', '.join(with_section)})")
        executor = with_section[0]
    section = getattr(EXECUTORS.get(executor), "config_section", None)
    if section is None:
        raise UsageError(f"executor {executor} takes no --runner-profile")
    raw = load_yaml(path)
    try:
        section.check(raw)  # checked here, to name the file in errors
    except UsageError as exc:
        raise UsageError(f"{exc} (runner profile {path})") from None
    return f"runner profile {path}", {"executor": executor, executor: raw}


def resolve_args(args: argparse.Namespace, check_executor: bool = True) -> Resolved:
    """The run's config from the command line: one call into the resolver (``runners.grid.resolve``)."""
    overrides = run_overrides(args)
    return resolve(
        args.task,
        load_yaml(args.config) if args.config else {},
        overrides,
        file_label=f"config {args.config}",
        check_executor=check_executor,
        profile=profile_layer(args.runner_profile, getattr(args, "executor", None)) if args.runner_profile else None,
        wait=bool(args.wait),
    )


__all__ = ["Option", "add_config_options", "resolve_args", "run_overrides", "schema_options"]
