"""``lskd-bench methods`` and ``tasks``: what the registries hold."""

from __future__ import annotations

import argparse

from ..methods import METHODS, TEACHER_METHOD
from ..tasks import get_task, task_names


def cmd_methods(args: argparse.Namespace) -> int:
    for name, cls in METHODS.items():
        if name == TEACHER_METHOD:
            continue
        axes = "alpha x T" if cls.uses_temperature else "alpha (no T axis)"
        kinds = "/".join(cls.task_kinds)
        print(f"{name:<10} {axes:<24} {kinds:<26} {cls.description}")
        print(f"{'':<10} needs: {cls.needs.describe()}")
    print("FEATURE+kd (e.g. crd+kd): a feature method plus compose.kd_weight*T^2*KL on the logits (alpha x T)")
    for tname in task_names():
        task = get_task(tname)
        per_pair, shared = task.pair_settings()
        if not per_pair and not shared:
            continue
        print(
            f"\n{tname} --pair NAME: method settings per pair (lskd_bench/configs/{task.pairs_recipe}.yaml, each value "
            "cited):"
        )
        for m, keys in per_pair.items():
            print(f"  {m:<10} per pair: {', '.join(keys)}")
        for m, why in shared.items():
            print(f"  {m:<10} {' '.join(why.split())}")
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    for name in task_names():
        task = get_task(name)
        print(f"{name:<18} {task.description}")
        pairs = task.pairs()
        if pairs:
            print(f"{'':<18} pairs (--pair): {', '.join(pairs)}")
    return 0


def add_methods(sub) -> None:
    mt = sub.add_parser("methods", help="list the KD methods: grid axes, task kinds, objective")
    mt.set_defaults(func=cmd_methods)


def add_tasks(sub) -> None:
    t = sub.add_parser("tasks", help="list registered tasks")
    t.set_defaults(func=cmd_tasks)
