"""The typed config schema: every key lskd-bench reads, its type, default, bounds and help.

A config is a nested dict. ``Section`` describes one level of it: ``Field`` leaves and nested
sections. ``Section.check(value)`` returns the value with every default filled in and every type
normalised (an int given for a float becomes a float), or raises ``UsageError`` naming the dotted key,
the expected type and, for a typo, the closest known key (``did you mean teacher.epochs?``). The checked value
is a ``Config``: a dict (``cfg["student"]["lr"]``) whose keys are also typed attributes (``cfg.student.lr``,
``cfg.kd.lambda_`` for a key that is a Python keyword); an attribute the schema lacks names its dotted key.

The schema is the single place that lists defaults. Tasks add their own ``data`` section and extend
the ``teacher``/``student`` sections; KD methods add one section each, named after the method.
"""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import UsageError

_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
INT_MAX = 2**31 - 1  # the bound of an int Field without its own max


def _num(x: float) -> str:
    """A bound as written: 2147483647, not 2.14748e+09; 0.1 as 0.1."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


@dataclass(frozen=True)
class Flag:
    """How a ``Field`` is set from the command line of ``run``, ``config`` and ``check-data``: the CLI generates
    each option from these (``lskd_bench.cli.options``), so a key with a ``Flag`` gets its option without any
    code in the CLI. The option's type, bounds, choices and default are the Field's; its help is ``help`` (else
    the Field's), then ``note``, then the default when ``show_default``, then the config key(s) it sets. ``help``
    and ``note`` may name a default, read from the schema: ``{default}`` (this key's), ``{default:KEY}``.

    ``const``: a switch that sets this value (``--no-fuse``: ``False``); else the option takes a value (a
    comma-separated list for a list Field). ``path``: the value is a file or folder, made absolute. ``under``:
    the option sets the key only in this section (``teacher``), for a Field a section shares (the training
    recipe of teacher and student); one option name met at several keys sets them all (``--epochs``)."""

    name: str
    help: str = ""
    note: str = ""
    metavar: str | None = None
    const: Any = None
    path: bool = False
    show_default: bool = False
    under: str | None = None


@dataclass(frozen=True)
class Field:
    """One config value.

    ``type`` is int, float, bool, str, or a one-element list ``[int]`` / ``[float]`` / ``[str]`` for a
    list of that type. ``identity=False`` keeps the key out of a cell's hash (settings that cannot
    change a result: checkpoint interval, hardware).
    """

    type: Any
    default: Any
    help: str = ""
    choices: tuple = ()
    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False
    max_exclusive: bool = False
    nullable: bool = False
    identity: bool = True
    check: Callable[[Any], str | None] | None = None  # extra rule: returns an error text or None
    flags: tuple[Flag, ...] = ()  # the command-line options that set this key (``Flag``)

    def type_name(self) -> str:
        if isinstance(self.type, list):
            return f"a list of {_TYPE_NAMES[self.type[0]].removeprefix('an ').removeprefix('a ')}s"
        return _TYPE_NAMES[self.type]

    def normalise(self, value: Any, key: str) -> Any:
        if value is None:
            if self.nullable or self.default is None:
                return None
            raise UsageError(f"{key} must be {self.type_name()}, got null")
        if isinstance(self.type, list):
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
                raise UsageError(f"{key} must be {self.type_name()}, got {value!r}")
            out = [self._scalar(self.type[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
            for v in out:
                self._bounds(v, key)
        else:
            out = self._scalar(self.type, value, key)
            self._bounds(out, key)
        if self.check is not None:
            err = self.check(out)
            if err:
                raise UsageError(f"{key} {err}, got {value!r}")
        return out

    def _scalar(self, typ: Any, value: Any, key: str) -> Any:
        ok = False
        if typ is bool:
            ok = isinstance(value, bool)
        elif typ is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif typ is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            value = float(value) if ok else value
        elif typ is str:
            ok = isinstance(value, str)
        if not ok:
            raise UsageError(f"{key} must be {_TYPE_NAMES[typ]}, got {value!r}")
        if self.choices and value not in self.choices:
            raise UsageError(
                f"{key} must be one of {', '.join(map(str, self.choices))}, "
                f"got {value!r}{_suggest(str(value), self.choices)}"
            )
        return value

    def _bounds(self, v: Any, key: str) -> None:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            return
        lo, hi = self.min, self.max
        if hi is None and isinstance(v, int) and v > INT_MAX:  # ints reach C ints (seeds, threads, sizes)
            raise UsageError(f"{key} must be <= {INT_MAX}, got {v!r}")
        bad_lo = lo is not None and (v <= lo if self.min_exclusive else v < lo)
        bad_hi = hi is not None and (v >= hi if self.max_exclusive else v > hi)
        if bad_lo or bad_hi:
            if hi is None:
                rule = f"{'>' if self.min_exclusive else '>='} {_num(lo)}"
            elif lo is None:
                rule = f"{'<' if self.max_exclusive else '<='} {_num(hi)}"
            else:
                rule = (
                    f"in {'(' if self.min_exclusive else '['}{_num(lo)}, {_num(hi)}{')' if self.max_exclusive else ']'}"
                )
            raise UsageError(f"{key} must be {rule}, got {v!r}")


class Section:
    """A mapping of keys to ``Field`` leaves and nested ``Section``s."""

    def __init__(self, fields: Mapping[str, Field | Section], help: str = ""):
        self.fields: dict[str, Field | Section] = dict(fields)
        self.help = help

    def extend(self, more: Mapping[str, Field | Section]) -> Section:
        """A copy with ``more`` added or replacing keys."""
        return Section({**self.fields, **more}, self.help)

    def defaults(self) -> dict[str, Any]:
        return {k: (f.defaults() if isinstance(f, Section) else _copy(f.default)) for k, f in self.fields.items()}

    def check(self, value: Any, path: str = "") -> dict[str, Any]:
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise UsageError(f"{path or 'the config'} must be a mapping, got {value!r}")
        for key in value:
            if key not in self.fields:
                dotted = f"{path}.{key}" if path else str(key)
                known = [f"{path}.{k}" if path else k for k in self.fields]
                hint = _suggest(dotted, known) or (
                    f" (known: {', '.join(sorted(self.fields))})"
                    if len(self.fields) <= 12
                    else " ('lskd-bench config' lists every key)"
                )
                raise UsageError(f"unknown config key {dotted}{hint}")
        out = Config(path=path)
        for key, f in self.fields.items():
            dotted = f"{path}.{key}" if path else key
            if isinstance(f, Section):
                out[key] = f.check(value.get(key), dotted)
            else:
                out[key] = f.normalise(value[key], dotted) if key in value else _copy(f.default)
        return out

    def identity(self, value: Mapping[str, Any]) -> dict[str, Any]:
        """``value`` without the keys marked ``identity=False`` (what a cell's hash covers)."""
        out = {}
        for key, f in self.fields.items():
            if key not in value:
                continue
            if isinstance(f, Section):
                out[key] = f.identity(value[key])
            elif f.identity:
                out[key] = value[key]
        return out


class Config(dict):
    """A checked section of the config (``Section.check``): a dict whose keys are also attributes, each of the type
    its ``Field`` declares (``cfg.student.lr`` is a float, ``cfg.grid.seeds`` a list of ints). ``path`` is the
    section's dotted key; ``name_`` reads key ``name`` where that is a Python keyword (``cfg.kd.lambda_``); an
    attribute that is not a key raises ``AttributeError`` naming the dotted key and the closest one."""

    def __init__(self, *args: Any, path: str = "", **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.__dict__["path"] = path

    def __getattr__(self, name: str) -> Any:
        key = name[:-1] if name.endswith("_") and name[:-1] in self else name
        if key in self:
            return self[key]
        if name.startswith("__"):
            raise AttributeError(name)
        path = self.__dict__.get("path", "")
        dotted = f"{path}.{name}" if path else name
        known = [f"{path}.{k}" if path else str(k) for k in self]
        raise AttributeError(f"no config key {dotted}{_suggest(dotted, known)}")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"config key {name}: set it as an item (cfg[{name!r}] = ...), or in a config layer")

    def __reduce__(self) -> Any:  # pickles as the plain dict it holds
        return (dict, (dict(self),))

    def __deepcopy__(self, memo: dict) -> Config:
        return Config(copy.deepcopy(dict(self), memo), path=self.__dict__.get("path", ""))


def _represent_config(dumper: Any, data: Config) -> Any:
    return dumper.represent_dict(dict(data))


try:  # yaml.safe_dump writes a Config as the dict it is
    import yaml

    yaml.SafeDumper.add_representer(Config, _represent_config)
except ImportError:  # pragma: no cover - yaml is a dependency
    pass


def _copy(v: Any) -> Any:
    return list(v) if isinstance(v, list) else v


def _suggest(word: str, candidates: Sequence[str]) -> str:
    best = difflib.get_close_matches(word, [str(c) for c in candidates], n=1, cutoff=0.6)
    return f" (did you mean {best[0]}?)" if best else ""


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        dotted = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, dotted))
        else:
            out[dotted] = v
    return out


def field_at(section: Section, dotted: str) -> Field:
    """The ``Field`` at a dotted key (``grid.fixed.alpha``)."""
    node: Field | Section = section
    for part in dotted.split("."):
        if not isinstance(node, Section) or part not in node.fields:
            raise KeyError(dotted)
        node = node.fields[part]
    if not isinstance(node, Field):
        raise KeyError(dotted)
    return node


def default_text(section: Section, dotted: str) -> str:
    """A key's default as help texts show it (lists comma-separated, numbers in ``:g``), read from the schema so
    that the CLI never restates a default."""
    value = field_at(section, dotted).default

    def one(v: Any) -> str:
        return f"{v:g}" if isinstance(v, float) else str(v)

    return ",".join(one(v) for v in value) if isinstance(value, list) else one(value)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of ``base`` with ``override`` merged in (dicts recursively, the rest replaced)."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def grid_values(cfg: Mapping[str, Any]) -> tuple[list[float], list[float]]:
    """(alphas, temperatures) a resolved config's grid runs: a swept axis takes its list, the other its fixed value."""
    grid = cfg["grid"]
    alphas = grid["alphas"] if "alpha" in grid["axes"] else [grid["fixed"]["alpha"]]
    temps = grid["temperatures"] if "T" in grid["axes"] else [grid["fixed"]["T"]]
    return [float(a) for a in alphas], [float(t) for t in temps]


# ------------------------------------------------------------------------------------------------ sections
def _gpu_ids(value: str) -> str | None:
    ids = [p.strip() for p in value.split(",")]
    if not all(ids):
        return "must be comma-separated GPU ids"
    return "names a GPU twice" if len(set(ids)) != len(ids) else None


def positive_int(help: str, default: Any, **kw) -> Field:
    return Field(int, default, help, min=1, **kw)


TRAIN = Section(
    {
        "arch": Field(str, "", "model architecture (the task lists the ones it offers)"),
        "epochs": positive_int("training epochs", 30, flags=(Flag("--epochs"),)),
        "max_updates": Field(
            int, None, "stop after this many optimizer updates (epochs still bound the run)", min=1, nullable=True
        ),
        "batch_size": positive_int("global batch size (split across DDP processes)", 64, flags=(Flag("--batch-size"),)),
        "optimizer": Field(str, "sgd", "optimizer", choices=("sgd", "adam", "adamw")),
        "lr": Field(float, 0.05, "base learning rate", min=0.0, min_exclusive=True, flags=(Flag("--lr"),)),
        "momentum": Field(float, 0.9, "SGD momentum", min=0.0, max=1.0),
        "nesterov": Field(bool, False, "Nesterov momentum (SGD)"),
        "weight_decay": Field(float, 0.0, "weight decay", min=0.0),
        "decay_norm_and_bias": Field(
            bool,
            False,
            "apply weight decay to biases and norm parameters too (the official "
            "code does; lskd-bench's default leaves them out)",
        ),
        "betas": Field(
            [float],
            [0.9, 0.999],
            "Adam/AdamW betas",
            min=0.0,
            max=1.0,
            max_exclusive=True,
            check=lambda v: None if len(v) == 2 else "must hold two values",
        ),
        "adam_eps": Field(float, 1e-8, "Adam/AdamW epsilon", min=0.0, min_exclusive=True),
        "schedule": Field(
            str,
            "cosine",
            "learning-rate schedule: cosine/step/multistep/constant per epoch, inverse_sqrt per update",
            choices=("cosine", "step", "multistep", "constant", "inverse_sqrt"),
        ),
        "step_size": Field(int, 30, "epochs between decays (schedule: step)", min=1),
        "milestones": Field([int], [], "epochs at which the lr decays (schedule: multistep)", min=1),
        "gamma": Field(float, 0.1, "decay factor (step, multistep)", min=0.0, min_exclusive=True),
        "warmup_epochs": Field(
            int,
            0,
            "linear warm-up over the first N epochs, per update (epoch schedules; the official "
            "ImageNet student's 5-epoch warm-up)",
            min=0,
        ),
        "warmup_updates": Field(int, 0, "linear warm-up updates (inverse_sqrt)", min=0),
        "warmup_init_lr": Field(float, 0.0, "lr at update 0 of the warm-up (inverse_sqrt)", min=0.0),
        "clip_norm": Field(float, 0.0, "gradient-norm clipping (0: off)", min=0.0),
        "seed": Field(int, None, "teacher seed (default: the first grid seed)", min=0, nullable=True),
        "init_checkpoint": Field(
            str,
            None,
            "local weights to start from (lskd-bench or library format)",
            nullable=True,
            flags=(
                Flag(
                    "--init-checkpoint",
                    help="local weights to start the teacher from (e.g. ImageNet-pretrained for CUB)",
                    path=True,
                    under="teacher",
                ),
                Flag(
                    "--student-init-checkpoint",
                    help="local weights to start the students from",
                    path=True,
                    under="student",
                ),
            ),
        ),
        "checkpoint": Field(
            str,
            None,
            "teacher only: an already trained teacher, evaluated and distilled, not trained",
            nullable=True,
            flags=(
                Flag(
                    "--teacher-checkpoint",
                    help="an already trained teacher (one alpha): evaluated and distilled, not trained",
                    path=True,
                    under="teacher",
                ),
            ),
        ),
        "checkpoint_every": Field(
            int,
            None,
            "also checkpoint every N updates within an epoch (resume mid-epoch)",
            min=1,
            nullable=True,
            identity=False,
        ),
        "eval_every": Field(
            int, 1, "evaluate every N epochs (and always after the last) for best/last metrics", min=1, identity=False
        ),
    },
    "training recipe of one role",
)

GRID = Section(
    {
        "axes": Field(
            [str],
            ["alpha", "T"],
            "swept axes",
            choices=("alpha", "T"),
            flags=(
                Flag(
                    "--grid",
                    note="an axis not swept takes grid.fixed (alpha {default:grid.fixed.alpha}, "
                    "T {default:grid.fixed.T})",
                    show_default=True,
                ),
            ),
        ),
        "alphas": Field(
            [float],
            [0.0, 0.1],
            "teacher label smoothing values",
            min=0.0,
            max=1.0,
            max_exclusive=True,
            check=lambda v: None if v else "needs at least one value",
            flags=(Flag("--alphas", show_default=True),),
        ),
        "temperatures": Field(
            [float],
            [1.0, 2.0, 3.0, 64.0],
            "KD temperatures",
            min=0.0,
            min_exclusive=True,
            check=lambda v: None if v else "needs at least one value",
            flags=(Flag("--temperatures", show_default=True),),
        ),
        "seeds": Field(
            [int],
            [0],
            "student seeds",
            min=0,
            check=lambda v: None if v else "needs at least one seed",
            flags=(Flag("--seeds", note="default: the task's; 'lskd-bench config --task NAME' shows them"),),
        ),
        "fixed": Section(
            {
                "alpha": Field(
                    float, 0.1, "alpha when the alpha axis is not swept", min=0.0, max=1.0, max_exclusive=True
                ),
                "T": Field(float, 1.0, "T when the T axis is not swept", min=0.0, min_exclusive=True),
            }
        ),
    },
    "the alpha x T x seed grid",
)

ANALYSIS = Section(
    {
        "export": Field(
            bool,
            False,
            "save penultimate features (features.npz) when a cell finishes; false: analyze / visualize compute "
            "them from the cell's final weights when first needed, and keep them",
            identity=False,
        ),
        "train_per_class": Field(
            int, None, "train samples per class exported (null: all)", min=1, nullable=True, identity=False
        ),
        "val_per_class": Field(
            int, None, "val samples per class exported (null: all)", min=1, nullable=True, identity=False
        ),
    }
)

LOCK = Section(
    {
        "heartbeat_s": Field(
            float, 10.0, "seconds between a training process's lock heartbeats", min=0.1, max=3600.0, identity=False
        ),
        "stale_s": Field(
            float,
            300.0,
            "a lock without a heartbeat for this long is stale (its owner died)",
            min=1.0,
            max=30 * 86400.0,
            identity=False,
        ),
        "poll_s": Field(
            float, 1.0, "seconds between checks on cells another process trains", min=0.01, max=3600.0, identity=False
        ),
    },
    "cross-process cell locks",
)

LOGGING = Section(
    {
        "tensorboard": Field(
            bool,
            False,
            "write TensorBoard event files per cell (CELL/tensorboard/: loss, lr, loss terms, "
            "metrics; needs the tensorboard extra)",
            identity=False,
        ),
        "every_updates": Field(int, 50, "loggers: log the step loss and lr every N updates", min=1, identity=False),
        "loggers": Field(
            [str],
            [],
            "experiment trackers, one run per cell: tensorboard, wandb, mlflow or a plugin "
            "(entry points lskd_bench.loggers); logging.tensorboard: true adds tensorboard",
            identity=False,
            flags=(Flag("--loggers", note="W&B and MLflow read their own WANDB_* / MLFLOW_* variables"),),
        ),
        "project": Field(
            str,
            "lskd-bench",
            "W&B project and MLflow experiment of the cells' runs (WANDB_PROJECT / "
            "MLFLOW_EXPERIMENT_NAME win when set)",
            identity=False,
        ),
        "artifacts": Field(
            bool,
            False,
            "loggers: upload each finished cell's final weights (last and selected) as artifacts of its run "
            "(mlflow, wandb; tensorboard has none)",
            identity=False,
        ),
        "close_timeout_s": Field(
            float,
            60.0,
            "at the end of a cell, wait at most this long for the loggers to write what is queued",
            min=0.0,
            identity=False,
        ),
        "format": Field(
            str,
            "auto",
            "progress output: bar (bars on the terminal), plain (a line every interval_s and "
            "at each epoch end), json (the same as one JSON object a line), auto (bar when stdout and "
            "stderr are terminals, else plain)",
            choices=("auto", "bar", "plain", "json"),
            identity=False,
            flags=(
                Flag(
                    "--log-format",
                    note="interval_s: logging.interval_s, default {default:logging.interval_s} s",
                    show_default=True,
                ),
            ),
        ),
        "interval_s": Field(
            float,
            60.0,
            "plain/json progress: seconds between lines within an epoch",
            min=0.0,
            min_exclusive=True,
            identity=False,
        ),
    },
    "training curves, trackers and progress output",
)

RUN = Section(
    {
        "task": Field(str, "digits", "task name"),
        "methods": Field(
            [str],
            ["kd"],
            "KD methods students are trained with",
            flags=(Flag("--methods", note="see 'lskd-bench methods'", show_default=True),),
        ),
        "baseline": Field(
            bool,
            True,
            "train the no-KD student (cross-entropy) per seed",
            flags=(Flag("--no-baseline", help="skip the no-KD baseline student", const=False),),
        ),
        "metrics": Field(
            [str],
            [],
            "registered metrics (lskd_bench.metrics entry points) cells report besides their task's own; "
            "computed when a cell is evaluated, not part of its identity",
            identity=False,
        ),
        "teacher_weights": Field(
            str,
            "last",
            "the teacher weights a student distils from: its last epoch's (model.pt) "
            "or its selected epoch's (model_selected.pt); each recipe follows its reference code",
            choices=("last", "selected"),
        ),
        "grid": GRID,
        "analysis": ANALYSIS,
        "lock": LOCK,
        "logging": LOGGING,
        "device": Field(
            str,
            "auto",
            "auto (cuda if available, unless the task's models are too small to gain from it), cpu or cuda",
            choices=("auto", "cpu", "cuda"),
            identity=False,
            flags=(Flag("--device"),),
        ),
        "amp": Field(str, "bf16", "bf16 autocast on CUDA, or fp32", choices=("bf16", "fp32"), identity=False),
        "compile": Field(
            bool, False, "torch.compile the model being trained", identity=False, flags=(Flag("--compile", const=True),)
        ),
        "channels_last": Field(
            bool,
            False,
            "channels_last memory format on CUDA",
            identity=False,
            flags=(Flag("--channels-last", const=True),),
        ),
        "num_workers": Field(
            int,
            0,
            "data-loader worker processes",
            min=0,
            max=1024,
            identity=False,
            flags=(Flag("--num-workers", note="image tasks"),),
        ),
        "threads": Field(
            int,
            None,
            "intra-op CPU threads per training process (null: the CPUs this process may "
            "use, divided by the cells trained at once; 1 for models under 5 M multiply-adds a sample)",
            min=1,
            max=4096,
            nullable=True,
            identity=False,
            flags=(Flag("--threads"),),
        ),
        "eval_batch_size": Field(
            int,
            None,
            "batch size of evaluation and feature export (null: per device: 256 on CUDA; on the CPU the largest "
            "power of two from 16 to 256 whose largest activation stays within 8 MiB, 32 for CIFAR's ResNets)",
            min=1,
            nullable=True,
            identity=False,  # metrics do not depend on it (tests/runners/test_evaluation.py)
        ),
        "executor": Field(
            str,
            "auto",
            "where cells train: local, subprocess, torchrun, slurm or a plugin; auto: "
            "subprocess over every GPU with several GPUs (or gpus/per_gpu given), torchrun with "
            "nproc_per_node > 1, subprocess on the CPU when several units train at once there (jobs), else local",
            identity=False,
            flags=(Flag("--executor"),),
        ),
        "jobs": Field(
            int,
            None,
            "units trained at once by the subprocess/torchrun executors (null: one per GPU slot; on the CPU one "
            "per CPU, each a process of one thread, for models under 5 M multiply-adds a sample in a grid of at "
            "least 1e11 multiply-adds of training, else 1)",
            min=1,
            nullable=True,
            identity=False,
            flags=(Flag("--jobs"),),
        ),
        "gpus": Field(
            str,
            None,
            'comma-separated GPU ids the subprocess/torchrun executors may use, e.g. "0,1,2,3" '
            "(null: CUDA_VISIBLE_DEVICES if set, else every GPU)",
            nullable=True,
            identity=False,
            check=_gpu_ids,
            flags=(Flag("--gpus", note="each unit's worker sees only its own"),),
        ),
        "per_gpu": Field(
            int,
            1,
            "units sharing one GPU at a time (subprocess/torchrun executors)",
            min=1,
            max=256,
            identity=False,
            flags=(Flag("--per-gpu", note="small models: 2-8", show_default=True),),
        ),
        "nproc_per_node": Field(
            int,
            1,
            "DDP processes (GPUs) per unit (torchrun executor)",
            min=1,
            max=1024,
            identity=False,
            flags=(Flag("--nproc-per-node", note="with --executor left out, N > 1 selects the torchrun executor"),),
        ),
        "sync_batchnorm": Field(
            bool,
            True,
            "under several processes, BatchNorm uses the global batch's statistics (as one process does); false: "
            "each rank's own (its result then depends on the process count: false enters the cell's hash)",
            identity=False,  # in the hash only when false: runners.cells._batchnorm_identity
        ),
        "fuse": Field(
            bool,
            True,
            "train the students of one teacher (and seed) in one shared data pass",
            identity=False,
            flags=(
                Flag(
                    "--no-fuse",
                    help="train every cell in its own data pass (default: the students of one teacher share each "
                    "batch and the teacher forward)",
                    const=False,
                ),
            ),
        ),
        "max_fused": Field(
            int, 8, "at most this many cells in one fused pass (larger groups are split)", min=1, identity=False
        ),
    }
)
