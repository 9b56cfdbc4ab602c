"""Machine translation: corpus readers on fixture files in the real layouts, sub-word cache, word-level KD over
non-pad positions, a tiny grid end to end with BLEU, mid-epoch resume, sequence-level KD, bad roots."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lskd_bench import store
from lskd_bench.errors import UsageError
from lskd_bench.tasks.base import BatchRequest
from lskd_bench.tasks.nmt.corpus import read_corpus

from ..fixtures import make_plain, make_raw_iwslt, pairs, require

fairseq = require("fairseq", "the NMT stack (pip install -e '.[nmt]')")


def tiny_nmt(root, **extra) -> dict:
    role = {
        "arch": "transformer_micro",
        "epochs": 2,
        "max_tokens": 256,
        "lr": 3e-3,
        "warmup_updates": 4,
        "eval_every": 1,
    }
    o = {
        "data": {"root": str(root), "vocab_size": 60},
        "generation": {"beam": 2, "max_len_a": 1.0, "max_len_b": 5},
        "grid": {"alphas": [0.0, 0.1], "temperatures": [1.0, 2.0]},
        "teacher": dict(role),
        "student": dict(role),
    }
    for k, v in extra.items():
        o[k] = {**o.get(k, {}), **v} if isinstance(v, dict) else v
    return o


# ------------------------------------------------------------------------------------------ readers
@pytest.mark.slow
def test_importing_fairseq_leaves_the_root_logger_alone():
    """fairseq's text_to_speech task calls logging.basicConfig(level=DEBUG) when imported: without the adapter's
    guard, every library's debug lines (torch.compile's file locks, ...) flood a run's stderr."""
    import subprocess
    import sys

    code = (
        "import logging; from lskd_bench.tasks.nmt.fairseq_adapter import _fairseq; _fairseq(); "
        "import fairseq.tasks.text_to_speech; r = logging.getLogger(); print(r.level, len(r.handlers))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["30", "0"]  # WARNING, no handler: as before the import


def test_raw_iwslt_layout_is_read_like_prepare_iwslt14(tmp_path):
    make_raw_iwslt(tmp_path, "de-en", n_train=60)
    c = read_corpus(tmp_path, "en", "de")  # finds ROOT/de-en/ and the de-en pair name for an en-de direction
    text = pairs(60)
    # metadata lines dropped (3 talk headers x 4 tags), each <title> kept as a pair: 63 pairs, every 23rd held out
    kept = []
    for i, p in enumerate(text):
        if i % 20 == 0:
            kept.append(("Jane Doe: A talk", "Jane Doe: Ein Vortrag"))
        kept.append(p)
    assert c.valid == [p for i, p in enumerate(kept, 1) if i % 23 == 0]
    assert c.train == [p for i, p in enumerate(kept, 1) if i % 23 != 0]
    assert c.test == pairs(4, 100) + pairs(5, 104)  # dev2010 then tst2010, in name order
    assert "train.tags: 12 metadata line pair(s) dropped" in c.report
    assert any(line.startswith("test: 9 segments from IWSLT14.TED.dev2010, IWSLT14.TED.tst2010") for line in c.report)
    only = read_corpus(tmp_path, "en", "de", test_sets=("tst2010",))
    assert only.test == pairs(5, 104)


def test_raw_layout_reverse_direction_and_xml_entities(tmp_path):
    d = make_raw_iwslt(tmp_path, "en-de", n_train=30)
    (d / "IWSLT14.TED.tst2010.en-de.en.xml").write_text(
        '<seg id="1"> Tom &amp; Jerry </seg>\n<seg id="2"> b </seg>\n'
        '<seg id="3"> c </seg>\n<seg id="4"> d </seg>\n<seg id="5"> e </seg>\n'
    )
    c = read_corpus(d, "de", "en")
    assert c.test[4][1] == "Tom & Jerry" and c.test[4][0] == pairs(5, 104)[0][1]


def _insert(path, at: int, lines: list[str]) -> None:
    text = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join(text[:at] + lines + text[at:]) + "\n", encoding="utf-8")


def test_raw_reader_drops_only_the_known_metadata_tags(tmp_path):
    """As prepare-iwslt14.sh / prepare-iwslt17-multilingual.sh: <url>, <talkid>, <keywords>, <speaker>,
    <reviewer>, <translator> lines go, <title>/<description> keep their text, and a real sentence that
    starts with '<' (software UI strings in TED-like corpora) stays a pair."""
    d = make_raw_iwslt(tmp_path, "de-en", n_train=20)  # one talk header: 4 tags + <title>, then 20 pairs
    extra_en = [
        "<reviewer>Ann Smith</reviewer>",
        "<translator href='x'>Bo Li</translator>",
        "<description>A talk about cats.</description>",
        "<internal> is reserved.",
        "<aliases> must contain at least one <alias>",
    ]
    extra_de = [
        "<reviewer>Ann Smith</reviewer>",
        "<translator href='x'>Bo Li</translator>",
        "<description>Ein Vortrag über Katzen.</description>",
        "<internal> ist reserviert.",
        "<aliases> muss mindestens ein <alias> enthalten",
    ]
    _insert(d / "train.tags.de-en.en", 5, extra_en)
    _insert(d / "train.tags.de-en.de", 5, extra_de)
    c = read_corpus(tmp_path, "en", "de")
    assert "train.tags: 6 metadata line pair(s) dropped" in c.report  # 4 header tags + reviewer + translator
    assert c.train[:5] == [
        ("Jane Doe: A talk", "Jane Doe: Ein Vortrag"),
        ("A talk about cats.", "Ein Vortrag über Katzen."),
        ("<internal> is reserved.", "<internal> ist reserviert."),
        ("<aliases> must contain at least one <alias>", "<aliases> muss mindestens ein <alias> enthalten"),
        pairs(1)[0],
    ]
    assert len(c.train) + len(c.valid) == 24 and len(c.valid) == 1


def test_raw_reader_misaligned_metadata_exits_2_naming_the_line(tmp_path, cli):
    """A metadata line deleted on one side and a line appended keeps the line counts equal: without the
    check every later pair would be shifted by one."""
    d = make_raw_iwslt(tmp_path, "de-en", n_train=60)
    de = (d / "train.tags.de-en.de").read_text(encoding="utf-8").splitlines()
    assert de[26] == "<keywords>talks, science</keywords>"  # the second talk header (line 27)
    (d / "train.tags.de-en.de").write_text("\n".join(de[:26] + de[27:] + ["Noch ein Satz."]) + "\n", encoding="utf-8")
    rc, _, err = cli("check-data", "--task", "iwslt_ende", "--data-root", str(tmp_path))
    assert rc == 2 and err.count("\n") == 1
    assert (
        f"{d}/train.tags.de-en.en and {d}/train.tags.de-en.de are misaligned at line 27: a <keywords> line in the en "
        "file, a <speaker> line in the de file"
    ) in err


@pytest.mark.parametrize("side", ["en", "de"])
def test_raw_test_set_with_a_side_missing_exits_2(tmp_path, cli, side):
    d = make_raw_iwslt(tmp_path, "de-en", n_train=30)
    (d / f"IWSLT14.TED.tst2010.de-en.{side}.xml").unlink()
    other = "de" if side == "en" else "en"
    rc, _, err = cli("check-data", "--task", "iwslt_ende", "--data-root", str(tmp_path))
    assert rc == 2
    assert (
        f"{d}/IWSLT14.TED.tst2010.de-en.{side}.xml is missing (the {side} side of "
        f"IWSLT14.TED.tst2010.de-en.{other}.xml); a test set needs both sides"
    ) in err


def test_raw_seg_id_mismatch_names_the_first_differing_id(tmp_path):
    d = make_raw_iwslt(tmp_path, "de-en", n_train=30)
    p = d / "IWSLT14.TED.dev2010.de-en.de.xml"
    p.write_text(p.read_text(encoding="utf-8").replace('<seg id="3">', '<seg id="33">'), encoding="utf-8")
    with pytest.raises(UsageError) as err:
        read_corpus(tmp_path, "en", "de")
    assert (
        "IWSLT14.TED.dev2010.de-en.en.xml and IWSLT14.TED.dev2010.de-en.de.xml hold different <seg> ids: segment 3 "
        'is <seg id="3"> in the en file, <seg id="33"> in the de file'
    ) in str(err.value)
    q = d / "IWSLT14.TED.tst2010.de-en.de.xml"
    q.write_text(q.read_text(encoding="utf-8").replace('<seg id="33">', '<seg id="3">'), encoding="utf-8")
    p.write_text(
        "\n".join(x for x in p.read_text(encoding="utf-8").splitlines() if 'id="33"' not in x and 'id="4"' not in x)
    )
    with pytest.raises(UsageError) as err:
        read_corpus(tmp_path, "en", "de")
    assert 'segment 3 is <seg id="3"> in the en file, missing (the file ends after 2 segments) in the de file' in str(
        err.value
    )


def test_plain_layout_and_cleaning_counts(tmp_path):
    root = make_plain(tmp_path, n_train=10, n_valid=3, n_test=4)
    with open(root / "train.en", "a") as f:
        f.write("word " * 200 + "\n" + "one\n" + "\n")
    with open(root / "train.de", "a") as f:
        f.write("wort " * 200 + "\n" + "eins zwei drei vier\n" + "leer\n")
    c = read_corpus(root, "en", "de", max_len=175, len_ratio=1.5)
    assert c.counts() == {"train": 10, "valid": 3, "test": 4}
    assert (
        c.report[0]
        == "train: 13 pairs read, kept 10 (dropped 1 empty/undecodable, 1 over 175 words, 1 with length ratio over 1.5)"
    )


@pytest.mark.parametrize(
    "breakage,message",
    [
        (
            lambda r: (r / "train.de").write_text("a\nb\n"),
            "train.en has 10 lines but {root}/train.de has 2: the files are not aligned",
        ),
        (
            lambda r: (r / "train.de").write_bytes(b"gut\n\xff\xfe kaputt\n" + b"x\n" * 8),
            "{root}/train.de:2: not valid UTF-8",
        ),
        (lambda r: (r / "test.de").unlink(), "{root}/test.de is missing; expected the raw IWSLT layout"),
    ],
)
def test_plain_layout_errors_name_the_file(tmp_path, breakage, message):
    root = make_plain(tmp_path / "d", n_train=10)
    breakage(root)
    with pytest.raises(UsageError) as err:
        read_corpus(root, "en", "de")
    assert message.format(root=root) in str(err.value)


def test_bad_utf8_can_be_skipped(tmp_path):
    root = make_plain(tmp_path, n_train=10)
    lines = (root / "train.de").read_bytes().splitlines(keepends=True)
    lines[3] = b"\xff\xfe\n"
    (root / "train.de").write_bytes(b"".join(lines))
    c = read_corpus(root, "en", "de", policy="skip")
    assert len(c.train) == 9 and "train.de: 1 line(s) not valid UTF-8, skipped" in c.report


@pytest.mark.parametrize("make", [lambda p: p, lambda p: p.mkdir() or p])
def test_bad_root_exits_2_naming_both_layouts(tmp_path, cli, make):
    root = make(tmp_path / "nowhere")
    rc, _, err = cli("run", "--task", "iwslt_ende", "--data-root", str(root), "--out", str(tmp_path / "runs"))
    assert rc == 2 and err.count("\n") == 1
    assert "expected the raw IWSLT layout (train.tags.<pair>.<lang>" in err and "or a plain one (train.<lang>" in err
    assert "wit3.fbk.eu" in err
    assert not (tmp_path / "runs").exists()


def test_check_data_reports_counts(tmp_path, cli):
    make_raw_iwslt(tmp_path, "de-en", n_train=60)
    rc, out, _ = cli("check-data", "--task", "iwslt_ende", "--data-root", str(tmp_path))
    assert rc == 0
    assert "iwslt_ende: data OK (train 61, valid 2, test 9)" in out
    assert "train: 61 pairs read, kept 61" in out


# ------------------------------------------------------------------------------------------ sub-words
def test_subword_model_is_cached_by_content(tmp_path):
    from lskd_bench.runners.grid import resolve_config
    from lskd_bench.tasks import get_task

    root = make_plain(tmp_path / "data")
    cfg = resolve_config("iwslt_ende", {}, tiny_nmt(root))
    task = get_task("iwslt_ende")
    data = task.load_data(cfg, cache_dir=tmp_path / "cache")
    (model,) = (tmp_path / "cache").glob("spm-*/spm.model")
    mtime = model.stat().st_mtime_ns
    again = task.load_data(cfg, cache_dir=tmp_path / "cache")
    assert model.stat().st_mtime_ns == mtime  # reused, not retrained
    assert [a.tolist() for a in again.train.src] == [a.tolist() for a in data.train.src]
    sw = data.extras["subwords"]
    assert sw.decode(data.val.tgt[0].tolist()) == data.val.tgt_text[0]  # round trip, eos dropped
    assert all(s[-1] == 2 for s in data.train.src)  # every sentence ends with eos
    cfg2 = resolve_config("iwslt_ende", {}, tiny_nmt(root, data={"vocab_size": 50}))
    task.load_data(cfg2, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("spm-*/spm.model"))) == 2  # other settings: another model


def test_task_data_names_the_evaluated_split_and_the_output_size(tmp_path):
    """For translation ``TaskData.val`` holds the test split and ``num_classes`` the vocabulary size: the honest
    names ``test`` and ``num_outputs`` read the same values, and the old names keep working."""
    from lskd_bench.runners.grid import resolve_config
    from lskd_bench.tasks import TaskData, get_task

    root = make_plain(tmp_path / "data", n_test=6, n_valid=4)
    data = get_task("iwslt_ende").load_data(resolve_config("iwslt_ende", {}, tiny_nmt(root)), tmp_path / "cache")
    test_en = (root / "test.en").read_text().splitlines()
    assert data.test is data.val is data.split("test") and data.test.src_text == test_en
    assert data.extras["valid"].src_text == (root / "valid.en").read_text().splitlines()
    assert data.num_outputs == data.num_classes == len(data.extras["dictionary"]) and data.class_names == []
    third_party = TaskData(train=[1], val=[2], num_classes=3, class_names=["a", "b", "c"])
    assert third_party.test == [2] and third_party.num_outputs == 3


# ------------------------------------------------------------------------------------------ word-level KD
def test_word_level_kd_counts_only_non_pad_positions(tmp_path):
    """forward() keeps the non-pad target positions, so KD equals the hand computation over those rows."""
    from lskd_bench.methods import LossContext, build_method, total_loss
    from lskd_bench.tasks.nmt import PAD, TranslationTask

    V = 7
    target = torch.tensor([[4, 5, 2, PAD], [6, 2, PAD, PAD]])  # two sentences, 3 and 2 real tokens

    class Fixed(torch.nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = logits

        def forward(self, src, lengths, prev, **kw):
            return self.logits, None

    g = torch.Generator().manual_seed(0)
    s_full, t_full = torch.randn(2, 4, V, generator=g), torch.randn(2, 4, V, generator=g)
    batch = {"net_input": {"src_tokens": None, "src_lengths": None, "prev_output_tokens": None}, "target": target}
    task = TranslationTask()
    s, y = task.forward(Fixed(s_full), batch)
    t, _ = task.forward(Fixed(t_full), batch)
    assert s.shape == (5, V) and y.tolist() == [4, 5, 2, 6, 2]
    T = 2.0
    kd = build_method("kd", {"kd": {"lambda": 1.0}})
    got = total_loss(kd.loss(s, y, t, LossContext(T=T))).item()

    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    rows = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    sl = log_softmax(np.stack([s_full[i, j].numpy() for i, j in rows]) / T)
    tl = log_softmax(np.stack([t_full[i, j].numpy() for i, j in rows]) / T)
    expected = T * T * (np.exp(tl) * (tl - sl)).sum(-1).mean()
    assert got == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------------------------ the grid
@pytest.mark.slow
def test_tiny_grid_end_to_end_with_bleu(tmp_path, cli):
    from lskd_bench.config import load_yaml  # noqa: F401  (config files are YAML; here overrides via --set)

    root = make_plain(tmp_path / "data")
    cfg_file = tmp_path / "nmt.yaml"
    import yaml

    o = tiny_nmt(root)
    o["data"].pop("root")
    cfg_file.write_text(yaml.safe_dump(o))
    argv = [
        "run",
        "--task",
        "iwslt_ende",
        "--data-root",
        str(root),
        "--config",
        str(cfg_file),
        "--out",
        str(tmp_path / "runs"),
        "--grid",
        "alpha,T",
        "--no-progress",
    ]
    rc, out, err = cli(*argv)
    assert rc == 0, err
    assert "7 cells: trained 7, reused 0 finished" in out
    assert "### iwslt_ende: transformer_micro → transformer_micro (kd)" in out
    assert "| Teacher (transformer_micro) |" in out and "| T = 2 |" in out
    assert "detokenised sacreBLEU on the test split" in out
    res = [json.loads(p.read_text()) for p in (tmp_path / "runs").rglob(store.RESULT)]
    assert len(res) == 7
    for r in res:
        assert set(r["metrics"]) == {"bleu", "chrf", "bleu_tok"} and 0.0 <= r["metrics"]["bleu"] <= 100.0
        assert r["metric_info"]["signatures"]["bleu"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
        assert r["primary_metric"] == "bleu" and len(r["history"]) == 2
    csv = (tmp_path / "runs" / "iwslt_ende" / "leaderboard.csv").read_text().splitlines()
    assert csv[0].startswith("task,role,teacher_arch,student_arch,method,alpha,T,seed,bleu,chrf,bleu_tok,")
    assert len(list((tmp_path / "runs" / "iwslt_ende" / "cache").glob("spm-*/spm.model"))) == 1  # one shared model
    rc, out, _ = cli(*argv)
    assert rc == 0 and "7 cells: trained 0, reused 7" in out
    rc, _, err = cli("analyze", "--runs", str(tmp_path / "runs"), "--target", "x")
    assert rc == 2 and "is a translation task" in err


@pytest.mark.slow
def test_killed_mid_epoch_resumes_to_identical_weights(tmp_path):
    """checkpoint_every writes within-epoch checkpoints; a cell interrupted mid-epoch resumes at the next
    batch with its RNG (dropout) state and ends bit-identical to an uninterrupted run."""
    from lskd_bench.runners.cells import plan_cells
    from lskd_bench.runners.grid import resolve_config
    from lskd_bench.runners.train import train_cell
    from lskd_bench.tasks import get_task

    root = make_plain(tmp_path / "data", n_train=80)
    cfg = resolve_config(
        "iwslt_ende",
        {},
        tiny_nmt(root, teacher={"max_tokens": 64, "checkpoint_every": 1, "eval_every": 2, "dropout": 0.3}),
    )
    task = get_task("iwslt_ende")
    data = task.load_data(cfg, cache_dir=tmp_path / "cache")
    teacher = next(c for c in plan_cells(cfg) if c.role == "teacher")
    steps = len(task.train_batches(data, cfg["teacher"], cfg, BatchRequest(seed=0, epoch=1)))
    assert steps >= 4
    ref = train_cell(task, teacher, cfg, data, tmp_path / "ref", progress=False)

    def stop(epoch, i):
        if (epoch, i) == (1, 2):
            raise KeyboardInterrupt

    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train_cell(task, teacher, cfg, data, cut, progress=False, on_step=stop)
    st = torch.load(cut / store.STATE, weights_only=False)
    assert (st["position"]["epoch"], st["position"]["step"]) == (1, 3)  # mid-epoch: 3 batches of the 2nd epoch done
    seen = []
    res = train_cell(task, teacher, cfg, data, cut, progress=False, on_step=lambda e, i: seen.append((e, i)))
    assert seen[0] == (1, 3) and len(seen) == steps - 3  # only the remaining batches ran
    a, b = torch.load(tmp_path / "ref" / store.MODEL), torch.load(cut / store.MODEL)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert res["metrics"] == ref["metrics"] and res["updates"] == ref["updates"]


@pytest.mark.slow
def test_sequence_level_kd_trains_on_teacher_outputs(tmp_path, cli):
    root = make_plain(tmp_path / "data")
    import yaml

    o = tiny_nmt(root, grid={"alphas": [0.1], "temperatures": [1.0, 2.0]})
    o["data"].pop("root")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(o))
    rc, out, err = cli(
        "run",
        "--task",
        "iwslt_ende",
        "--data-root",
        str(root),
        "--config",
        str(tmp_path / "c.yaml"),
        "--methods",
        "seqkd",
        "--out",
        str(tmp_path / "runs"),
        "--no-baseline",
        "--no-progress",
    )
    assert rc == 0, err
    assert "2 cells: trained 2" in out  # teacher + one seqkd student per alpha: no temperature axis
    assert "| no T |" in out
    (cache,) = (tmp_path / "runs" / "iwslt_ende").glob("teacher_*/teacher_targets/targets-*.npz")
    z = np.load(cache)
    assert len(z["lens"]) == 48 and (z["ids"] == 2).sum() == 48  # one teacher translation (with eos) per pair
    rc, _, err = cli("run", "--methods", "seqkd", "--out", str(tmp_path / "r2"))
    assert rc == 2 and "method 'seqkd' does not apply to classification tasks" in err


# ------------------------------------------------------------------------------ model selection, files, translate
def _sacrebleu_cli(ref, hyp) -> list[float]:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "sacrebleu", str(ref), "-i", str(hyp), "-m", "bleu", "chrf", "-b", "-w", "4"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [float(x) for x in out.replace("[", "").replace("]", "").replace(",", " ").split()]


@pytest.mark.slow
def test_selection_on_valid_hypotheses_rescore_and_translate(tmp_path, cli):
    """Done-when of the issue: a tiny grid on a few hundred real pairs (Django's catalogues in the plain layout)
    selects its epoch on the valid split, stores test BLEU at the selected and last epochs, writes hypothesis
    files whose sacreBLEU (the sacrebleu command itself) equals the stored scores, and 'translate' turns a
    20-line file into 20 lines (and the test sources into the stored hypotheses)."""
    require("django", "Django's catalogues are the real corpus")
    import yaml

    from ..fixtures import make_django_plain

    root = make_django_plain(tmp_path / "data")
    role = {"epochs": 4, "max_tokens": 256, "lr": 5e-3, "warmup_updates": 10}
    o = tiny_nmt(
        root,
        data={"vocab_size": 200},
        generation={"max_len_a": 1.2, "max_len_b": 8},
        grid={"alphas": [0.1], "temperatures": [2.0]},
        teacher=role,
        student=role,
    )
    o["data"].pop("root")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(o))
    runs = tmp_path / "runs"
    rc, out, err = cli(
        "run",
        "--task",
        "iwslt_ende",
        "--data-root",
        str(root),
        "--config",
        str(tmp_path / "c.yaml"),
        "--out",
        str(runs),
        "--no-progress",
        "--no-baseline",
    )
    assert rc == 0, err
    assert "2 cells: trained 2" in out and "selected on the valid split (highest validation BLEU, same beam)" in out
    chrf = []
    for d in sorted((runs / "iwslt_ende").glob("*-*/")):
        r = json.loads((d / store.RESULT).read_text())
        assert r["config"]["task"] == r["run_config"]["task"] == "iwslt_ende"
        assert {k: r["selection"][k] for k in ("split", "metric", "mode")} == {
            "split": "valid",
            "metric": "valid_bleu",
            "mode": "max",
        }
        scores = [h["selection"] for h in r["history"]]
        assert len(scores) == 4 and all(0 <= x <= 100 for x in scores)
        sel = scores.index(max(scores)) + 1  # the first of equal scores
        assert r["best"]["epoch"] == r["selection"]["epoch"] == sel and r["best"]["score"] == max(scores)
        assert r["best"]["metrics"] == r["history"][sel - 1]["eval"] and r["metrics"] == r["history"][-1]["eval"]
        assert r["weights"] == {"last": "model.pt", "selected": "model.pt" if sel == 4 else "model_selected.pt"}
        assert (d / r["weights"]["selected"]).is_file() and (d / "spm.model").is_file()
        refs = (d / "test.ref.de").read_text(encoding="utf-8").splitlines()
        assert refs == list((root / "test.de").read_text(encoding="utf-8").splitlines())
        for which, metrics in (("selected", r["best"]["metrics"]), ("last", r["metrics"])):
            chrf.append(metrics["chrf"])
            hyp = d / r["files"]["hypotheses"][which]
            assert len(hyp.read_text(encoding="utf-8").splitlines()) == len(refs)
            assert _sacrebleu_cli(d / "test.ref.de", hyp) == [round(metrics["bleu"], 4), round(metrics["chrf"], 4)]
            rc, out, _ = cli("score", "--ref", str(d / "test.ref.de"), "--hyp", str(hyp))
            assert rc == 0 and f"bleu_tok {metrics['bleu_tok']:8.4f}  moses(de)+lowercase|" in out
    assert len(chrf) == 4 and max(chrf) > 0  # some hypotheses are not empty: the re-scoring compares real text
    teacher = next((runs / "iwslt_ende").glob("teacher_*"))
    # the test sources, translated by the selected weights in one batch as in evaluation: the stored hypotheses
    rc, out, err = cli(
        "translate",
        "--runs",
        str(runs),
        "--cell",
        teacher.name.rsplit("-", 1)[0],
        "-i",
        str(teacher / "test.src.en"),
        "--no-progress",
    )
    assert rc == 0, err
    assert out == (teacher / "test.hyp.selected.de").read_text(encoding="utf-8")
    assert f"with {teacher.name} (selected weights, epoch " in err and "beam 2, lenpen 1" in err
    # 20 lines in (an empty one, one with a U+2028 inside), 20 out, in order
    lines = [*(root / "valid.en").read_text(encoding="utf-8").splitlines()[:18], "", "Save\u2028and continue"]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    rc, _, err = cli(
        "translate",
        "--run",
        str(teacher),
        "-i",
        str(tmp_path / "in.txt"),
        "-o",
        str(tmp_path / "out.txt"),
        "--beam",
        "1",
        "--weights",
        "last",
        "--no-progress",
    )
    assert rc == 0, err
    got = (tmp_path / "out.txt").read_text(encoding="utf-8").split("\n")
    assert len(got) == 21 and got[-1] == "" and got[18] == ""  # 20 lines, each ended by a newline
    assert "translated 20 line(s)" in err and "(last weights, epoch 4)" in err and "beam 1" in err
    rc, _, err = cli("translate", "--runs", str(runs), "--cell", "nope", "-i", str(tmp_path / "in.txt"))
    assert rc == 2 and f"no finished cell named 'nope' under {runs}" in err
    # a cell finished before run_config, spm.model and the selected weights were stored: rebuilt from its recipe,
    # its recorded data/role/generation settings and the run's one cached sub-word model
    import shutil

    old = tmp_path / "old" / "iwslt_ende"
    shutil.copytree(teacher, old / teacher.name)
    shutil.copytree(runs / "iwslt_ende" / "cache", old / "cache")
    r = json.loads((old / teacher.name / store.RESULT).read_text())
    for key in ("run_config", "files", "weights", "selection"):
        del r[key]
    store.write_json(old / teacher.name / store.RESULT, r)
    (old / teacher.name / "spm.model").unlink()
    rc, out, err = cli(
        "translate", "--run", str(old / teacher.name), "-i", str(teacher / "test.src.en"), "--no-progress"
    )
    assert rc == 0, err
    assert (
        out == (teacher / "test.hyp.last.de").read_text(encoding="utf-8")
        and "the cell predates selected weights" in err
    )


@pytest.mark.slow
@pytest.mark.parametrize("select_on", ["valid_loss", "valid_bleu"])
def test_best_epoch_is_selected_on_valid_not_test(tmp_path, monkeypatch, select_on):
    """The reported epoch follows the validation score (scripted here: epoch 2 is best on valid loss), its test
    metrics, weights and hypotheses are kept, and the last epoch's beside them."""
    from lskd_bench.runners.cells import plan_cells
    from lskd_bench.runners.grid import resolve_config
    from lskd_bench.runners.train import train_cell
    from lskd_bench.tasks import get_task
    from lskd_bench.tasks.nmt import TranslationTask
    from lskd_bench.tasks.nmt.scoring import translation_scores

    scripted = iter([2.0, 1.0, 3.0])
    monkeypatch.setattr(TranslationTask, "valid_loss", lambda *a, **k: next(scripted))
    root = make_plain(tmp_path / "data", n_train=80)
    cfg = resolve_config("iwslt_ende", {}, tiny_nmt(root, teacher={"epochs": 3, "select_on": select_on}))
    task = get_task("iwslt_ende")
    data = task.load_data(cfg, cache_dir=tmp_path / "cache")
    teacher = next(c for c in plan_cells(cfg) if c.role == "teacher")
    r = train_cell(task, teacher, cfg, data, tmp_path / "t", progress=False)
    scores = [h["selection"] for h in r["history"]]
    if select_on == "valid_loss":
        assert scores == [2.0, 1.0, 3.0] and r["best"]["epoch"] == 2
        assert r["selection"]["mode"] == "min"
    else:  # real validation BLEU, highest first
        assert r["selection"]["mode"] == "max" and r["best"]["epoch"] == scores.index(max(scores)) + 1
    sel = r["best"]["epoch"]
    assert r["best"]["metrics"] == r["history"][sel - 1]["eval"] and r["metrics"] == r["history"][-1]["eval"]
    assert r["selection"]["split"] == "valid" and r["selection"]["metric"] == select_on
    if sel != 3:
        a, b = torch.load(tmp_path / "t" / "model_selected.pt"), torch.load(tmp_path / "t" / store.MODEL)
        assert any(not torch.equal(a[k], b[k]) for k in a)
    refs = (tmp_path / "t" / "test.ref.de").read_text(encoding="utf-8").splitlines()
    for which, metrics in (("selected", r["best"]["metrics"]), ("last", r["metrics"])):
        hyps = (tmp_path / "t" / f"test.hyp.{which}.de").read_text(encoding="utf-8").splitlines()
        assert translation_scores(hyps, refs, "de")[0] == metrics


# ------------------------------------------------------------------------------------------ speed paths
def test_fast_training_step_keeps_loss_gradients_and_update_on_a_fixed_batch(tmp_path):
    """The loop's fast path (non-pad positions gathered by an index found on the host, SDPA in every
    attention layer, cross_entropy(label_smoothing), fused Adam) against the plain one (boolean mask, fairseq's
    default forward, one-hot smoothed targets, single-tensor Adam) on one fixed batch."""
    import copy

    import torch.nn.functional as F

    from lskd_bench.methods import LossContext, build_method, total_loss
    from lskd_bench.runners.grid import resolve_config
    from lskd_bench.runners.train import build_optimizer
    from lskd_bench.tasks import get_task
    from lskd_bench.tasks.nmt import PAD

    root = make_plain(tmp_path / "data")
    cfg = resolve_config("iwslt_ende", {}, tiny_nmt(root, teacher={"dropout": 0.0}))
    task = get_task("iwslt_ende")
    data = task.load_data(cfg, cache_dir=tmp_path / "cache")
    batch = task.collate(data.train, np.arange(16))
    assert batch["target"].eq(PAD).any()  # the batch is padded
    torch.manual_seed(0)
    model = task.build_model("transformer_micro", data, cfg, cfg["teacher"]).train()
    ref = copy.deepcopy(model)

    net = batch["net_input"]
    logits, _ = ref(net["src_tokens"], net["src_lengths"], net["prev_output_tokens"])
    keep = batch["target"].ne(PAD)
    s_ref, y = logits[keep], batch["target"][keep]
    q = 0.9 * F.one_hot(y, s_ref.shape[-1]).float() + 0.1 / s_ref.shape[-1]
    ref_loss = -(q * F.log_softmax(s_ref, -1)).sum(-1).mean()

    s, y_fast = task.forward(model, batch)
    s_mask, _ = task.forward(model, {k: v for k, v in batch.items() if k != "target_index"})
    assert torch.equal(s, s_mask) and torch.equal(y_fast, y)  # the index gathers exactly the masked rows
    loss = total_loss(build_method("ls", cfg).loss(s, y_fast, None, LossContext(alpha=0.1)))  # ctx.alpha: the method's
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
    assert s.shape == s_ref.shape and torch.allclose(s, s_ref, rtol=1e-5, atol=1e-5)

    ref_loss.backward()
    loss.backward()
    grads = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, grads[name].grad, rtol=1e-4, atol=1e-7), name
    for name, p in model.named_parameters():  # the optimizers compared on the same gradients
        grads[name].grad = p.grad.clone()
    opt = build_optimizer(list(model.parameters()), cfg["teacher"])
    assert opt.defaults["fused"]
    ref_opt = torch.optim.Adam(
        ref.parameters(), lr=opt.param_groups[0]["lr"], betas=tuple(cfg["teacher"]["betas"]), foreach=False
    )
    opt.step()
    ref_opt.step()
    for name, p in model.named_parameters():
        assert torch.allclose(p, grads[name], rtol=1e-6, atol=1e-9), name


def test_generation_batches_by_sentences_and_tokens():
    from lskd_bench.tasks.nmt import generation_batches

    lens = np.array([5, 3, 9, 3, 7, 4])  # sorted (stable): 1, 3, 5, 0, 4, 2

    def plan(*a):
        return [b.tolist() for b in generation_batches(lens, *a)]

    assert plan(3, None) == [[1, 3, 5], [0, 4, 2]]
    assert plan(3, 12) == [[1, 3, 5], [0], [4], [2]]  # 3 x 4 = 12 fits; 2 x 7 and 2 x 9 do not
    assert plan(8, 6) == [[1, 3], [5], [0], [4], [2]]  # a sentence longer than the bound decodes alone
    assert plan(8, 1000) == [[1, 3, 5, 0, 4, 2]]


def test_translate_obeys_generation_max_tokens_and_keeps_order(tmp_path, monkeypatch):
    from lskd_bench.runners.grid import resolve_config
    from lskd_bench.tasks import get_task
    from lskd_bench.tasks.nmt import PAD
    from lskd_bench.tasks.nmt import fairseq_adapter as fa

    root = make_plain(tmp_path / "data")
    cfg = resolve_config("iwslt_ende", {}, tiny_nmt(root, generation={"max_tokens": 20}))
    task = get_task("iwslt_ende")
    data = task.load_data(cfg, cache_dir=tmp_path / "cache")
    shapes = []

    def fake_generate(gen, sample):  # "translates" each sentence into its own source (no eos, no padding)
        src = sample["net_input"]["src_tokens"]
        shapes.append(tuple(src.shape))
        return [[t for t in row.tolist() if t not in (PAD, 2)] for row in src]

    monkeypatch.setattr(fa, "generate", fake_generate)
    model = task.build_model("transformer_micro", data, cfg, cfg["teacher"])
    out = task.translate(model, data, data.val, cfg, torch.device("cpu"))
    assert out == [s[:-1].tolist() for s in data.val.src]  # every sentence, in split order
    assert sum(n for n, _ in shapes) == len(data.val) and len(shapes) > 1
    assert all(n * width <= 20 or n == 1 for n, width in shapes)


@pytest.mark.slow
def test_bleu_does_not_depend_on_the_decoding_batch(tmp_path):
    """Translation's evaluation batch is ``generation.max_sentences`` (outside the hash, as ``eval_batch_size``): the
    hypotheses of a (briefly trained) model, and so BLEU, are the same decoded one sentence at a time, three at a
    time or all at once. A padded batch changes a sentence's scores in float rounding only (about 1e-6), which
    decides only between near-tied candidates: an untrained or barely trained model (a repeated token against the
    end of the sentence) decodes otherwise at another batch (after 6 epochs here it still did), this one (10) not."""
    from lskd_bench.runners.grid import resolve_config
    from lskd_bench.tasks import get_task

    root = make_plain(tmp_path / "data")
    cfg = resolve_config("iwslt_ende", {}, tiny_nmt(root, teacher={"dropout": 0.0}))
    task = get_task("iwslt_ende")
    data = task.load_data(cfg, cache_dir=tmp_path / "cache")
    torch.manual_seed(0)
    model = task.build_model("transformer_micro", data, cfg, cfg["teacher"])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for epoch in range(10):
        for batch in task.train_batches(data, cfg["teacher"], cfg, BatchRequest(seed=0, epoch=epoch)):
            loss = torch.nn.functional.cross_entropy(*task.forward(model.train(), batch))
            opt.zero_grad()
            loss.backward()
            opt.step()
    cpu, got = torch.device("cpu"), {}
    for n in (1, 3, 128):
        c = {**cfg, "generation": {**cfg["generation"], "max_sentences": n}}
        got[n] = (task.translate(model, data, data.extras["valid"], c, cpu), task.evaluate(model, data, c, cpu))
    assert got[128][1]["bleu"] > 0  # a model that translates something
    for n in (1, 3):
        assert got[n] == got[128], n


def test_device_auto_keeps_tiny_translation_models_on_the_cpu(tmp_path, monkeypatch):
    from lskd_bench.runners import train
    from lskd_bench.runners.grid import resolve_config

    root = make_plain(tmp_path / "data")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    tiny = resolve_config("iwslt_ende", {}, tiny_nmt(root, teacher={"arch": "transformer_tiny"}))
    assert "transformer_micro and transformer_tiny are too small" in train.auto_cpu_reason(tiny)
    assert train.resolve_device(tiny).type == "cpu"
    assert train.resolve_device({**tiny, "device": "cuda"}).type == "cuda"  # an explicit choice wins
    big = resolve_config("iwslt_ende", {}, tiny_nmt(root, student={"arch": "transformer_iwslt_de_en_small"}))
    assert train.auto_cpu_reason(big) is None and train.resolve_device(big).type == "cuda"


def test_pad_to_multiple_repeats_shapes_and_keeps_the_loss(tmp_path):
    from lskd_bench.runners.grid import resolve_config
    from lskd_bench.tasks import get_task

    root = make_plain(tmp_path / "data")
    cfg = resolve_config("iwslt_ende", {}, tiny_nmt(root, teacher={"dropout": 0.0, "pad_to_multiple": 8}))
    task = get_task("iwslt_ende")
    data = task.load_data(cfg, cache_dir=tmp_path / "cache")
    plain_cfg = {**cfg["teacher"], "pad_to_multiple": 1}
    padded = list(task.train_batches(data, cfg["teacher"], cfg, BatchRequest(seed=0, epoch=0)))
    plain = list(task.train_batches(data, plain_cfg, cfg, BatchRequest(seed=0, epoch=0)))
    assert len(padded) == len(plain) > 1
    assert any(b["target"].shape[1] % 8 for b in plain)  # the plain lengths vary
    torch.manual_seed(0)
    model = task.build_model("transformer_micro", data, cfg, cfg["teacher"]).eval()
    for p8, p1 in zip(padded, plain):
        for t in (p8["net_input"]["src_tokens"], p8["net_input"]["prev_output_tokens"], p8["target"]):
            assert t.shape[1] % 8 == 0
        s8, y8 = task.forward(model, p8)
        s1, y1 = task.forward(model, p1)
        assert torch.equal(y8, y1) and torch.allclose(s8, s1, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_long_test_line_is_cut_and_damaged_cells_translate_in_one_line(tmp_path, cli):
    """Issue 26: a test line far longer than the model's positions is cut in evaluation, as translate cuts it, and
    said (it went whole to the encoder: gigabytes); translate on a cell whose weights, spm.model or run_config are
    missing or damaged, or with -o a directory, is one line, exit 2."""
    import shutil

    root = make_plain(tmp_path / "data", n_train=24, n_valid=3, n_test=3)
    long_line = " ".join(["word"] * 3000)  # ~3000 sub-words > max_positions 64
    (root / "test.en").write_text((root / "test.en").read_text(encoding="utf-8") + long_line + "\n", encoding="utf-8")
    (root / "test.de").write_text((root / "test.de").read_text(encoding="utf-8") + "Wort\n", encoding="utf-8")
    role = {"epochs": 1, "max_positions": 64}
    o = tiny_nmt(root, grid={"alphas": [0.1], "temperatures": [1.0]}, teacher=role, student=role)
    import yaml

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(o))
    runs = tmp_path / "runs"
    rc, _out, err = cli(
        "run",
        "--task",
        "iwslt_ende",
        "--config",
        str(tmp_path / "c.yaml"),
        "--out",
        str(runs),
        "--no-progress",
        "--no-baseline",
    )
    assert rc == 0, err
    assert "note: test: 1 source line(s) longer than 64 sub-words cut to the models' longest input (e.g. line 4)" in err
    teacher = next((runs / "iwslt_ende").glob("teacher_*"))
    (tmp_path / "in.txt").write_text("hello\n", encoding="utf-8")

    def damaged(name, edit):
        d = tmp_path / name
        shutil.copytree(teacher, d)
        edit(d)
        return d

    def edit_result(d, change):
        r = json.loads((d / store.RESULT).read_text())
        change(r)
        (d / store.RESULT).write_text(json.dumps(r))

    cases = {
        "model missing": (lambda d: (d / "model.pt").unlink(), "model.pt: unusable weights (is missing)"),
        "model truncated": (
            lambda d: (d / "model.pt").write_bytes((d / "model.pt").read_bytes()[:100]),
            "model.pt: unusable weights (is corrupt",
        ),
        "spm missing": (lambda d: (d / "spm.model").unlink(), "spm.model"),
        "spm truncated": (
            lambda d: (d / "spm.model").write_bytes((d / "spm.model").read_bytes()[:50]),
            "cannot rebuild the cell's vocabulary",
        ),
        "run_config a list": (lambda d: edit_result(d, lambda r: r.update(run_config=[1])), "run_config"),
        "run_config without generation": (
            lambda d: edit_result(d, lambda r: r["run_config"].pop("generation")),
            "train the cell again",
        ),
    }
    for name, (edit, needle) in cases.items():
        d = damaged(name.replace(" ", "_"), edit)
        rc, _, err = cli(
            "translate", "--run", str(d), "-i", str(tmp_path / "in.txt"), "--weights", "last", "--no-progress"
        )
        assert rc == 2 and err.count("\n") == 1 and needle in err, (name, err)
    rc, _, err = cli("translate", "--run", str(teacher), "-i", str(tmp_path / "in.txt"), "-o", str(tmp_path))
    assert rc == 2 and err == f"lskd-bench: error: -o/--output {tmp_path}: is a directory\n"


# ------------------------------------------------------------------------------------------ case 9: data first
def test_translation_layout_error_writes_nothing(tmp_path, cli):
    root = make_plain(tmp_path / "d", n_train=10)
    (root / "train.de").write_text("a\nb\n")
    for extra in ([], ["--dry-run"]):
        rc, _, err = cli(
            "run", "--task", "iwslt_ende", "--data-root", str(root), "--out", str(tmp_path / "runs"), *extra
        )
        assert rc == 2 and err.count("\n") == 1 and "the files are not aligned" in err
    assert not (tmp_path / "runs").exists()


def test_ddp_ranks_share_each_batch_and_their_target_rows_in_rank_order_are_one_process_batch(tmp_path):
    """Under DDP each rank takes its contiguous share of every batch's sentences (max_tokens is the global
    batch's): the ranks' target rows, gathered in rank order (runners.distributed), are one process's rows."""
    from lskd_bench.runners.grid import resolve_config
    from lskd_bench.tasks import get_task

    root = make_plain(tmp_path / "data")
    cfg = resolve_config("iwslt_ende", {}, tiny_nmt(root, teacher={"dropout": 0.0}))
    task = get_task("iwslt_ende")
    data = task.load_data(cfg, cache_dir=tmp_path / "cache")
    one = list(task.train_batches(data, cfg["teacher"], cfg, BatchRequest(seed=0, epoch=1)))
    ranks = [
        list(task.train_batches(data, cfg["teacher"], cfg, BatchRequest(seed=0, epoch=1, shard=(r, 2))))
        for r in range(2)
    ]
    assert len(one) > 1 and [len(r) for r in ranks] == [len(one)] * 2
    torch.manual_seed(0)
    model = task.build_model("transformer_micro", data, cfg, cfg["teacher"]).eval()
    for k, batch in enumerate(one):
        assert torch.cat([r[k]["id"] for r in ranks]).tolist() == batch["id"].tolist()
        _, y = task.forward(model, batch)
        assert torch.cat([task.forward(model, r[k])[1] for r in ranks]).tolist() == y.tolist()
    # more processes than a batch has sentences: every rank refuses alike (none would wait on a rank with nothing)
    fewest = min(len(b["id"]) for b in one)
    with pytest.raises(UsageError, match=f"a batch of {fewest} sentence.s. cannot be shared by {fewest + 1} processes"):
        task.train_batches(data, cfg["teacher"], cfg, BatchRequest(seed=0, epoch=1, shard=(0, fewest + 1)))
