"""``lskd_bench.results``: a run directory as one pandas DataFrame, and ``lskd-bench export``."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from lskd_bench import results, store
from lskd_bench.errors import UsageError
from lskd_bench.runners.grid import run_grid


@pytest.fixture(scope="module")
def finished_grid(tmp_path_factory):
    from lskd_bench.runners.grid import resolve_config

    from .fixtures import tiny_overrides

    out = tmp_path_factory.mktemp("grid")
    run_grid(resolve_config("digits", {}, tiny_overrides(epochs=2)), out, progress=False)
    return out


@pytest.mark.slow
def test_one_row_per_finished_cell_with_its_result_json_values(finished_grid):
    df = results.load(finished_grid)
    files = sorted(finished_grid.rglob(store.RESULT))
    assert len(df) == len(files) == 7 and df["cell"].is_unique
    assert list(df.columns[:10]) == results.ID_COLUMNS
    assert set(df["role"]) == {"teacher", "student", "baseline"}
    for path in files:
        res = json.loads(path.read_text())
        row = df[df["cell"] == path.parent.name].iloc[0]
        best = res["best"]
        assert (row["task"], row["role"], row["method"], row["seed"], row["config_hash"]) == (
            "digits",
            res["cell"]["role"],
            res["cell"]["method"],
            res["cell"]["seed"],
            res["cell"]["hash"],
        )
        assert {m: row[m] for m in best["metrics"]} == best["metrics"]  # the selected epoch's, exactly
        assert {m: row["last_" + m] for m in res["metrics"]} == res["metrics"]  # and the last epoch's
        assert row["selected_epoch"] == best["epoch"] and row["epochs"] == res["epochs"] == 2
        assert row["env_torch"] == res["env"]["torch"] and row["env_threads"] == res["env"]["threads"]
        if res["cell"]["role"] == "baseline":
            assert math.isnan(row["alpha"]) and math.isnan(row["T"])
        else:
            assert row["alpha"] == res["cell"]["alpha"]
        if res["cell"]["role"] == "student":
            assert row["T"] == res["cell"]["T"] and row["teacher_epoch"] == res["teacher_weights"]["epoch"]
            assert row["teacher_weights"] == "selected"  # digits follows the official image code
    last = results.load(finished_grid, select="last")
    assert list(last["top1"]) == list(df["last_top1"]) and list(last["selected_top1"]) == list(df["top1"])


@pytest.mark.slow
def test_select_best_is_an_alias_of_selected(finished_grid, cli, tmp_path):
    df = results.load(finished_grid)
    assert set(df["select"]) == {"selected"}
    pd.testing.assert_frame_equal(results.load(finished_grid, select="best"), df)
    with pytest.raises(UsageError, match="select must be selected"):
        results.load(finished_grid, select="top")
    outs = {}
    for select in ("best", "selected"):
        rc, _, err = cli(
            "leaderboard", "--runs", str(finished_grid), "--select", select, "--out", str(tmp_path / select)
        )
        assert rc == 0, err
        outs[select] = [(tmp_path / f"{select}{ext}").read_text() for ext in (".csv", ".md")]
    assert outs["best"] == outs["selected"]


@pytest.mark.slow
def test_aggregates_with_pandas_like_the_leaderboard(finished_grid):
    df = results.load(finished_grid)
    means = df[df["role"] == "student"].pivot_table(index="T", columns="alpha", values="top1", aggfunc="mean")
    assert means.shape == (2, 2)  # T 1, 4 x alpha 0, 0.1


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_export_round_trips(finished_grid, tmp_path, cli, fmt):
    out = tmp_path / f"all.{fmt}"
    rc, _, err = cli("export", "--runs", str(finished_grid), "--format", fmt, "--out", str(out))
    assert rc == 0 and f"wrote {out} (7 cells" in err
    df = results.load(finished_grid)
    back = {"parquet": pd.read_parquet, "csv": pd.read_csv, "jsonl": lambda p: pd.read_json(p, lines=True)}[fmt](out)
    assert list(back.columns) == list(df.columns) and len(back) == len(df)
    assert list(back["cell"]) == list(df["cell"]) and list(back["top1"]) == list(df["top1"])
    if fmt == "parquet":  # types survive too
        pd.testing.assert_frame_equal(back, df)


def test_export_errors(tmp_path, cli):
    rc, _, err = cli("export", "--runs", str(tmp_path))
    assert rc == 2 and err.strip() == f"lskd-bench: error: no finished cells under {tmp_path}"
    rc, _, err = cli("export", "--runs", str(tmp_path / "nope"))
    assert rc == 2 and "does not exist" in err


def test_load_skips_hostile_results_naming_each_and_every_format_exports(tmp_path):
    """``results.load`` passes each result.json through store's one gate: every hostile edit is skipped with
    "skipped: FILE (why)" and the rest exports as CSV, Parquet and JSON Lines (no ArrowInvalid, OverflowError...)."""
    from .fixtures import HOSTILE_EDITS, plant_results

    runs = tmp_path / "runs"
    planted = plant_results(runs, list(HOSTILE_EDITS))
    problems: list[str] = []
    df = results.load(runs, problems=problems)
    assert len(df) == 1 and len(problems) == len(planted)
    for edit, path in planted.items():
        assert any(p.startswith(f"skipped: {path} ({HOSTILE_EDITS[edit][0]}") for p in problems), (edit, problems)
    for fmt in results.FORMATS:
        results.export(df, tmp_path / f"out.{fmt}", fmt)
    assert pd.read_parquet(tmp_path / "out.parquet")["seed"].tolist() == [0]


def test_env_values_of_several_kinds_across_results_export_as_text(tmp_path):
    """An env key that holds a number in one result and text or true/false in another (each valid alone) becomes a
    text column: Parquet holds one type a column."""
    from .fixtures import plant_results, real_result

    runs = tmp_path / "runs"
    plant_results(runs, [])
    for seed, env in ((1, {"host": 5, "flag": True, "ratio": 1}), (2, {"host": "node-a", "flag": 1, "ratio": 0.5})):
        res = real_result()
        res["cell"]["seed"], res["env"] = seed, {**res["env"], **env}
        d = runs / "digits" / f"student_kd_cnn_tiny_a0.1_T1_s{seed}-{seed:08x}"
        d.mkdir()
        store.write_json(d / store.RESULT, res)
    df = results.load(runs)
    results.export(df, tmp_path / "out.parquet", "parquet")
    back = pd.read_parquet(tmp_path / "out.parquet")
    assert back["env_host"].tolist()[1:] == ["5", "node-a"] and back["env_flag"].tolist()[1:] == ["True", "1"]
    assert back["env_ratio"].tolist()[1:] == [1.0, 0.5]  # numbers of both kinds stay numbers


# ------------------------------------------------------------------------------------------ config columns, README
def _sweep(runs):
    """Teachers (alpha 0, 0.1), the baseline, kd students at T 1 and 4 with kd.lambda 1.0 and 0.5, fitnet students
    (no T): result.json files as this version writes them (tests/data/result.json, edited), seeds 0 and 1."""
    from .fixtures import real_result

    planted = []
    for seed in (0, 1):
        cells = [("teacher", "ls", a, None, None) for a in (0.0, 0.1)] + [("baseline", "ls", None, None, None)]
        cells += [("student", "kd", a, t, lam) for a in (0.0, 0.1) for t in (1.0, 4.0) for lam in (1.0, 0.5)]
        cells += [("student", "fitnet", a, None, None) for a in (0.0, 0.1)]
        for role, method, alpha, T, lam in cells:
            res = real_result()
            i = len(planted)
            name = f"{role}_{method}_{i}"
            c = res["cell"]
            c.update(role=role, method=method, alpha=alpha, T=T, seed=seed, hash=f"{i:08x}", name=name)
            if role == "teacher":
                c.update(arch="cnn_wide", teacher=None)
                res["config"]["train"]["arch"] = "cnn_wide"
            if role != "student":
                res["config"]["method"] = None
                res["teacher_weights"] = None
            elif method == "fitnet":
                res["config"]["method"] = {"beta": 100.0, "ce": 1.0, "hint_layer": 2}
            else:
                res["config"]["method"]["lambda"] = lam
            res["metrics"] = res["best"]["metrics"] = {"top1": 50.0 + i, "top5": 90.0}
            d = runs / "digits" / f"{name}-{i:08x}"
            d.mkdir(parents=True)
            store.write_json(d / store.RESULT, res)
            planted.append(name)
    return planted


def test_the_varying_identity_keys_are_columns_and_a_lambda_sweep_stays_apart(tmp_path):
    planted = _sweep(tmp_path)
    df = results.load(tmp_path)
    assert len(df) == len(planted)
    config = results.config_columns(df)
    # the teachers' recipe differs from the students' (their own role), but within a role only kd.lambda varies
    assert config == ["kd.lambda"] and list(df.columns[10:11]) == config
    kd = df[df["method"] == "kd"]
    assert sorted(set(kd["kd.lambda"])) == [0.5, 1.0] and df[df["method"] != "kd"]["kd.lambda"].isna().all()
    students = df[df["role"] == "student"]
    means = students.groupby(["method", "kd.lambda", "T", "alpha"], dropna=False)["top1"].mean()
    assert len(means) == 2 * 2 * 2 + 2  # kd: lambda x T x alpha, never averaged together; fitnet: alpha
    assert len(results.latest(df)) == len(df) - 8  # one kd row per cell (the later lambda) ...
    assert len(results.latest(df, keep_apart=config)) == len(df)  # ... unless the sweep is kept apart


def test_config_values_of_one_key_with_several_kinds_export_as_text(tmp_path):
    _sweep(tmp_path)
    path = next(tmp_path.rglob("student_kd_*/" + store.RESULT))
    res = json.loads(path.read_text())
    res["config"]["method"]["lambda"] = "half"
    store.write_json(path, res)
    df = results.load(tmp_path)
    results.export(df, tmp_path / "out.parquet", "parquet")
    assert "half" in set(pd.read_parquet(tmp_path / "out.parquet")["kd.lambda"])


def _readme_dataframe_blocks() -> list[str]:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("### Results as a DataFrame", 1)[1].split("\n### ", 1)[0]
    return [block.split("```", 1)[0] for block in section.split("```python\n")[1:]]


def test_readme_dataframe_examples_run_and_keep_every_method(tmp_path, monkeypatch):
    blocks = _readme_dataframe_blocks()
    assert len(blocks) >= 2 and any("results.latest(" in b for b in blocks)
    _sweep(tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), ns)
    table = ns["table"]
    methods = set(table.index.get_level_values("method"))
    assert methods == {"kd", "fitnet"}  # fitnet (no T) is kept
    kd = table.loc["kd"]
    assert sorted(set(kd.index.get_level_values("kd.lambda"))) == [0.5, 1.0] and len(kd) == 4  # lambda x T
    assert len(table.loc["fitnet"]) == 1 and (table[("count", 0.0)] == 2).all()  # two seeds a cell
    assert len(ns["current"]) == len(ns["df"])


def test_config_keys_outside_the_hash_are_no_columns(tmp_path):
    """``train.eval_every`` does not enter a cell's hash (schema: identity=False): cells that differ only there are
    one config; ``train.lr`` does."""
    _sweep(tmp_path)
    paths = sorted(tmp_path.rglob("student_kd_*/" + store.RESULT))
    for path, key, value in ((paths[0], "eval_every", 2), (paths[1], "lr", 0.2)):
        res = json.loads(path.read_text())
        res["config"]["train"][key] = value
        store.write_json(path, res)
    df = results.load(tmp_path)
    assert results.config_columns(df) == ["kd.lambda", "train.lr"]
    assert sorted(set(df[df["role"] == "student"]["train.lr"])) == [0.05, 0.2]


NOTEBOOK_CHECK = """\
import json
print("CHECK" + json.dumps({
    "config": config,
    "rows": [[m, None if lam != lam else lam, None if t != t else t] for m, lam, t in table.index],
    "kd": table.loc[("kd", 1.0, 4.0), ("mean", 0.0)],
    "fitnet": table.xs("fitnet", level="method")[("mean", 0.1)].iloc[0],
    "by_config": len(students.groupby(["method", *config], dropna=False)),
}))
"""


@pytest.mark.slow
def test_the_example_notebook_runs_headless_on_a_run_dir(tmp_path, monkeypatch):
    """examples/explore_results.ipynb executed by a kernel (nbclient) on a hand-made run dir (``_sweep``: a
    kd.lambda sweep and fitnet without T, two seeds), RUNS from LSKD_RUNS: its α × T table keeps fitnet and both
    lambdas (kd, lambda 1, T 4, alpha 0: planted cells 5 and 18 -> top1 55 and 68, mean 61.5; fitnet at alpha 0.1:
    cells 12 and 25 -> 68.5), its groupby over the config has 3 groups and its plot cell draws a PNG."""
    from pathlib import Path

    from .fixtures import require

    nbformat = require("nbformat", "the notebook test (pip install 'lskd-bench[test]')")
    nbclient = require("nbclient", "the notebook test (pip install 'lskd-bench[test]')")
    require("ipykernel", "the notebook test (pip install 'lskd-bench[test]')")
    _sweep(tmp_path / "runs")
    monkeypatch.setenv("LSKD_RUNS", str(tmp_path / "runs"))
    path = Path(__file__).resolve().parents[1] / "examples" / "explore_results.ipynb"
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # committed without outputs
    nb.cells.append(nbformat.v4.new_code_cell(NOTEBOOK_CHECK))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    out = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    check = json.loads(out.split("CHECK", 1)[1])
    assert check["config"] == ["kd.lambda"]
    assert check["rows"] == [
        ["fitnet", None, None],
        ["kd", 0.5, 1.0],
        ["kd", 0.5, 4.0],
        ["kd", 1.0, 1.0],
        ["kd", 1.0, 4.0],
    ]
    assert check["kd"] == 61.5 and check["fitnet"] == 68.5 and check["by_config"] == 3
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 1
