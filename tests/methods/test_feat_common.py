"""Feature distillation in the runner: named outputs are the tensors RepDistiller's ``is_feat`` returns; a
method's parts are sized from a probe, trained with the student, checkpointed and never exported; fused groups of
feature and logit methods equal their members trained alone, and a killed group resumes bit for bit; bad needs are
one line before anything is written."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from lskd_bench import store
from lskd_bench.cifar_models import build_cifar_model
from lskd_bench.errors import UsageError
from lskd_bench.models import build_image_model
from lskd_bench.outputs import Layout, Tap, describe
from lskd_bench.runners.cells import plan_cells
from lskd_bench.runners.grid import resolve_config
from lskd_bench.runners.train import load_model, train_group
from lskd_bench.tasks import get_task

from ..fixtures import ROOT, assert_fused_equals_alone, example_site, same_weights, tiny_overrides, train_then_kill


def test_named_outputs_of_a_cifar_resnet_are_repdistillers_feats():
    torch.manual_seed(0)
    m = build_cifar_model("resnet8x4", 100).eval()
    x = torch.randn(3, 3, 32, 32)
    layout = describe(m, x)
    with torch.no_grad(), Tap(m, layout, ["stage0", "stages", "preact_stages", "embedding"]) as tap:
        logits = m(x)
        # by hand, as RepDistiller's resnet.py forward(is_feat=True, preact=True)
        f0 = F.relu(m.bn1(m.conv1(x)))
        f1, f2 = m.layer1(f0), None
        f2 = m.layer2(f1)
        block = m.layer3[-1]
        h = m.layer3[:-1](f2)
        pre3 = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(h))))) + (
            h if block.downsample is None else block.downsample(h)
        )
    out = tap.out
    assert list(layout.stages) == ["stage0", "stage1", "stage2", "stage3"]
    assert torch.equal(out["stage0"], f0) and torch.equal(out["stage1"], f1) and torch.equal(out["stage2"], f2)
    assert torch.equal(out["preact_stage3"], pre3) and torch.equal(out["stage3"], F.relu(pre3))
    assert (out["preact_stage3"] < 0).any()  # really before the ReLU (the in-place ReLU did not overwrite it)
    assert torch.equal(out["embedding"], m.features(x)) and torch.equal(logits, m.fc(out["embedding"]))
    assert [t.shape[1] for t in out.stages()] == [64, 128, 256]
    assert set(out) == {
        "stage0",
        "stage1",
        "stage2",
        "stage3",
        "preact_stage1",
        "preact_stage2",
        "preact_stage3",
        "embedding",
    }  # nothing that was not asked for


def test_tap_names_what_exists_for_an_unknown_output():
    m = build_cifar_model("wrn_16_2", 100)
    layout = describe(m, torch.randn(2, 3, 32, 32))
    with pytest.raises(UsageError, match=r"has no output 'preact_stage4' \(it has: logits, embedding, stage0"):
        Tap(m, layout, ["preact_stage4"])
    m = build_cifar_model("MobileNetV2", 100)
    m.feature_preacts = {}  # without its table: its stages end in a BN, the activation rule finds the stem's only
    layout = describe(m, torch.randn(2, 3, 32, 32))
    with pytest.raises(UsageError, match=r"has no output 'preact_stage2' \(it has: logits, embedding, stage0") as e:
        Tap(m, layout, ["preact_stage2"])
    assert str(e.value).endswith(
        "; its stage does not end in an activation module and the model lists no feature_preacts"
    )
    assert set(layout.preact) == {"stage0"} and "preact_stage2" not in layout.names()


@pytest.mark.parametrize(
    "arch,stages",
    [
        pytest.param("timm:resnet26d", 5, marks=pytest.mark.slow),
        # its forward returns conv_head's 1024 channels, not num_features' 288: the head is sized from the former
        pytest.param("timm:mobilenetv3_small_050", 5, marks=pytest.mark.slow),
        pytest.param("torchvision:regnet_y_400mf", 5, marks=pytest.mark.slow),
        ("resnet18", 5),
    ],
)
def test_any_timm_or_torchvision_classifier_by_name_with_its_stages(arch, stages):
    torch.manual_seed(0)
    m = build_image_model(arch, 7)
    x = torch.randn(2, 3, 64, 64)
    layout = describe(m, x)
    assert len(layout.stages) == stages and m(x).shape == (2, 7)
    sizes = [layout.shapes[k][1] for k in layout.stages]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] == 2  # one per resolution, down to 64 / 32
    with pytest.raises(UsageError, match="timm has no model 'nope'"):
        build_image_model("timm:nope", 7)
    with pytest.raises(UsageError, match="unknown arch 'keras:x'"):
        build_image_model("keras:x", 7)


def test_penultimate_export_reads_the_embedding_output():
    from lskd_bench.runners.train import penultimate

    torch.manual_seed(0)
    task = get_task("digits")
    cfg = resolve_config("digits", {}, tiny_overrides())
    data = task.load_data(cfg)
    model = task.build_model("cnn_tiny", data, cfg, cfg["student"]).eval()
    feats = penultimate(model, data.val, cfg, torch.device("cpu"))
    with torch.no_grad():
        want = model.features(data.val.x).numpy()
    assert feats.shape == want.shape and (abs(feats - want).max() < 1e-6)
    assert Tap(model, Layout(), ["embedding"]).names == ["embedding"]


@pytest.fixture(scope="module")
def feature_setup(tmp_path_factory):
    """Digits, a trained teacher (alpha 0.1) and the students of FitNet, CRD (its memory bank and negatives),
    FitNet+KD and KD (T 4) under it."""
    base = tmp_path_factory.mktemp("features")
    cfg = resolve_config(
        "digits",
        {},
        tiny_overrides(
            epochs=3,
            methods=["fitnet", "crd", "fitnet+kd", "kd"],
            grid={"alphas": [0.1], "temperatures": [4.0]},
            baseline=False,
        ),
    )
    task = get_task("digits")
    data = task.load_data(cfg)
    cells = plan_cells(cfg)
    teacher = next(c for c in cells if c.role == "teacher")
    (o,) = train_group(task, [teacher], cfg, data, [teacher.dir(base)], progress=False)
    assert o.error is None
    tmodel = load_model(task, teacher.arch, data, cfg, teacher.dir(base) / store.MODEL, torch.device("cpu"))
    return cfg, task, data, [c for c in cells if c.role == "student"], tmodel


@pytest.mark.slow
def test_feature_and_logit_students_fused_equal_students_trained_alone(feature_setup, tmp_path):
    cfg, task, data, students, tmodel = feature_setup
    assert sorted(c.method for c in students) == ["crd", "fitnet", "fitnet+kd", "kd"]
    assert_fused_equals_alone(task, students, cfg, data, tmodel, tmp_path)


@pytest.mark.slow
def test_killed_feature_group_resumes_bit_identically_and_exports_only_the_student(feature_setup, tmp_path):
    cfg, task, data, students, tmodel = feature_setup
    ref, cut = train_then_kill(task, students, cfg, data, tmodel, tmp_path, at_epoch=2)
    fit = next(c for c in students if c.method == "fitnet")
    state = torch.load(cut / fit.name / store.STATE, weights_only=True)
    assert any(k.startswith("regressor.") for k in state["parts"]["method"])  # the connector is checkpointed
    crd = torch.load(cut / next(c for c in students if c.method == "crd").name / store.STATE, weights_only=True)
    assert {"memory_s", "memory_t"} <= {k.rsplit(".", 1)[-1] for k in crd["parts"]["method"]}  # and CRD's memory bank
    out = train_group(task, students, cfg, data, [cut / c.name for c in students], teacher=tmodel, progress=False)
    assert all(o.error is None for o in out)
    assert all(same_weights(cut / c.name, ref / c.name) for c in students)
    student_keys = set(task.build_model(fit.arch, data, cfg, cfg["student"]).state_dict())
    assert set(torch.load(cut / fit.name / store.MODEL, weights_only=True)) == student_keys  # no connector exported


@pytest.fixture(scope="module")
def train_mode_setup(tmp_path_factory):
    """Digits, a trained teacher (alpha 0.1) and students whose teacher runs in train mode (BatchNorm on the batch's
    statistics): OFD (its default), OFD+KD and ReviewKD (teacher_mode: train, as on cifar100)."""
    base = tmp_path_factory.mktemp("train_mode")
    over = tiny_overrides(
        epochs=3,
        methods=["ofd", "ofd+kd", "reviewkd"],
        grid={"alphas": [0.1], "temperatures": [4.0]},
        baseline=False,
        reviewkd={"teacher_mode": "train", "warmup_epochs": 0.0},
    )
    cfg = resolve_config("digits", {}, over)
    task = get_task("digits")
    data = task.load_data(cfg)
    cells = plan_cells(cfg)
    teacher = next(c for c in cells if c.role == "teacher")
    (o,) = train_group(task, [teacher], cfg, data, [teacher.dir(base)], progress=False)
    assert o.error is None
    path = teacher.dir(base) / store.MODEL
    tmodel = load_model(task, teacher.arch, data, cfg, path, torch.device("cpu"))
    return cfg, task, data, [c for c in cells if c.role == "student"], tmodel, path


def _buffers(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_train_mode_teacher_is_the_authors_train_mode_forward_and_leaves_the_teacher_as_it_was(train_mode_setup):
    """ReviewKD's and OFD's authors run the teacher in train mode under no_grad: its BatchNorm layers normalise
    with the batch's statistics. lskd-bench computes the same outputs bit for bit, without touching the running
    statistics or the teacher's mode (a teacher shared by cells or reloaded on resume stays the same)."""
    import copy

    from lskd_bench.runners.probe import teacher_mode

    _cfg, _task, data, _students, tmodel, _ = train_mode_setup
    x = data.train.x[:16]
    before = _buffers(tmodel)
    authors = copy.deepcopy(tmodel).train()  # the authors' teacher: train mode, running statistics updated
    with torch.no_grad():
        want = authors(x)
        eval_out = tmodel(x)
        with teacher_mode(tmodel, "train"):
            got = tmodel(x)
        with teacher_mode(tmodel, "eval"):
            same = tmodel(x)
    assert torch.equal(got, want)
    assert not torch.equal(got, eval_out) and torch.equal(same, eval_out)
    assert not tmodel.training and not any(m.training for m in tmodel.modules())
    after = _buffers(tmodel)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert any(not torch.equal(authors.state_dict()[k], before[k]) for k in before)  # theirs moved; ours did not


@pytest.mark.slow
def test_train_mode_teacher_students_fused_equal_students_trained_alone(train_mode_setup, tmp_path):
    cfg, task, data, students, tmodel, _ = train_mode_setup
    assert sorted(c.method for c in students) == ["ofd", "ofd+kd", "reviewkd"]
    before = _buffers(tmodel)
    assert_fused_equals_alone(task, students, cfg, data, tmodel, tmp_path)
    assert all(torch.equal(v, before[k]) for k, v in tmodel.state_dict().items())  # shared by every pass above


@pytest.mark.slow
def test_killed_train_mode_teacher_group_resumes_bit_identically(train_mode_setup, tmp_path):
    cfg, task, data, students, tmodel, path = train_mode_setup
    ref, cut = train_then_kill(task, students, cfg, data, tmodel, tmp_path, at_epoch=2)
    fresh = load_model(task, "cnn_wide", data, cfg, path, torch.device("cpu"))  # the teacher reloaded on resume
    out = train_group(task, students, cfg, data, [cut / c.name for c in students], teacher=fresh, progress=False)
    assert all(o.error is None for o in out)
    assert all(same_weights(cut / c.name, ref / c.name) for c in students)


@pytest.mark.slow
def test_grid_of_train_and_eval_mode_teacher_methods_equals_its_cells_trained_alone(tmp_path):
    """OFD (teacher in train mode) and KD, FitNet (eval mode) in one grid: fused, they train in two passes that
    share the teacher model (train mode first); each cell ends as when trained alone, eval mode first."""
    from lskd_bench.runners.grid import run_grid

    over = {"grid": {"alphas": [0.1], "temperatures": [4.0]}, "epochs": 2}
    fused_cfg = resolve_config("digits", {}, tiny_overrides(methods=["ofd", "kd", "fitnet"], **over))
    alone_cfg = resolve_config("digits", {}, tiny_overrides(methods=["kd", "fitnet", "ofd"], fuse=False, **over))
    fused = run_grid(fused_cfg, tmp_path / "fused", progress=False)
    alone = run_grid(alone_cfg, tmp_path / "alone", progress=False)
    assert fused.ok and alone.ok and len(fused.trained) == len(alone.trained) == 5
    for c in plan_cells(fused_cfg):
        assert same_weights(c.dir(tmp_path / "fused"), c.dir(tmp_path / "alone")), c.name


def test_a_stage_the_architecture_lacks_is_one_line_before_anything_is_written(tmp_path, cli):
    rc, _, err = cli("run", "--methods", "fitnet", "--set", "fitnet.hint_layer=7", "--out", str(tmp_path / "r"))
    assert rc == 2 and err.count("\n") == 1
    assert (
        "method fitnet: teacher cnn_wide: ClassifierNet has no output 'stage7' (it has: logits, embedding, stage1"
        in err
    )
    assert not (tmp_path / "r").exists()
    rc, _, err = cli("run", "--task", "demo_ende", "--methods", "fitnet", "--out", str(tmp_path / "r"))
    assert rc == 2 and "method 'fitnet' does not apply to translation tasks (these do: " in err


def test_a_connector_that_cannot_be_sized_names_both_shapes():
    from lskd_bench.methods.feat_repd import ConvReg

    with pytest.raises(UsageError, match=r"student map of shape \(8, 2, 2\) onto a teacher map of shape \(16, 8, 8\)"):
        ConvReg((8, 2, 2), (16, 8, 8))
    assert ConvReg((8, 4, 4), (16, 2, 2))(torch.randn(1, 8, 4, 4)).shape == (1, 16, 2, 2)  # stride 2
    assert ConvReg((8, 2, 2), (16, 4, 4))(torch.randn(1, 8, 2, 2)).shape == (1, 16, 4, 4)  # transposed


@pytest.mark.slow
def test_third_party_feature_method_through_entry_point(tmp_path):
    """The example package (examples/third_party_feature_method), made importable with a .dist-info entry-point
    file as pip install writes it, runs through `lskd-bench run` with its X+kd composition, and `compare` lists it."""
    import subprocess
    import sys

    example = ROOT / "examples" / "third_party_feature_method"
    assert len((example / "lskd_example_feature.py").read_text().splitlines()) <= 40
    env = example_site(
        tmp_path, "third_party_feature_method", "lskd_example_feature", "cosine_hint = lskd_example_feature:CosineHint"
    )
    runs = tmp_path / "runs"
    base = [sys.executable, "-m", "lskd_bench"]
    p = subprocess.run(
        [
            *base,
            "run",
            "--out",
            str(runs),
            "--methods",
            "kd,cosine_hint,cosine_hint+kd",
            "--alphas",
            "0.1",
            "--temperatures",
            "4",
            "--seeds",
            "0",
            "--epochs",
            "2",
            "--no-progress",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    assert "5 cells: trained 5" in p.stdout  # teacher, baseline, kd, cosine_hint, cosine_hint+kd
    p = subprocess.run([*base, "methods"], env=env, capture_output=True, text=True)
    assert "cosine_hint" in p.stdout and "needs: student logits+embedding, teacher embedding" in p.stdout
    p = subprocess.run([*base, "compare", "--runs", str(runs)], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "| cosine_hint |" in p.stdout and "| cosine_hint+kd |" in p.stdout


@pytest.mark.parametrize(
    "arch,shape",
    [
        ("resnet8x4", (3, 32, 32)),  # feature_stages; preacts where the stage ends in a ReLU
        ("wrn_16_2", (3, 32, 32)),  # feature_preacts outside the stage, pooled map after the final BN and ReLU
        ("ShuffleV1", (3, 32, 32)),  # pre-activations assembled from two tensors
        ("MobileNetV2", (3, 32, 32)),
        ("vgg8", (3, 32, 32)),
        ("resnet18", (3, 64, 64)),  # torchvision: stages found by the probe, pre-activations by rule
        ("digits:cnn_tiny", (1, 8, 8)),
    ],
)
def test_one_probe_forward_keeps_what_a_tap_of_a_second_forward_takes(arch, shape):
    """``look(keep=True)``'s outputs (the probes of a teacher view, a method's setup and the checks before a run)
    are the tensors ``probe_outputs`` takes with a ``Tap`` in a second forward: every name of the layout, equal bit
    for bit, in the same order; ``describe`` gives the same layout."""
    from lskd_bench.outputs import look, probe_outputs
    from lskd_bench.tasks.digits import ARCHS, cnn

    torch.manual_seed(0)
    if arch.startswith("digits:"):
        m = cnn(ARCHS[arch.removeprefix("digits:")], 10)
    elif arch in ("resnet18",):
        m = build_image_model(arch, 7)
    else:
        m = build_cifar_model(arch, 100)
    x = torch.randn(2, *shape)
    seen = look(m, x, keep=True, preacts=True)
    layout = describe(m, x)
    assert seen.layout == layout
    names = layout.names()
    assert any(n.startswith("preact_") for n in names) and "embedding" in names
    for wanted in (names, list(reversed(names)), ["stages", "embedding"]):
        ours, tapped = seen.outputs(m, wanted), probe_outputs(m, layout, Tap(m, layout, wanted).names, x)
        assert list(ours) == list(tapped)
        assert all(torch.equal(ours[k], tapped[k]) for k in tapped)
    with pytest.raises(UsageError, match="has no output 'stage9'"):
        seen.outputs(m, ["stage9"])


class _Block(torch.nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv = torch.nn.Conv2d(cin, cout, 3, stride, 1)
        self.act = torch.nn.ReLU()

    def forward(self, x):
        return self.act(self.conv(x))


class _Odd(torch.nn.Module):
    """Two stages and a head, wired in one of the ways a forward may surprise a probe (``kind``)."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.b1, self.b2, self.spare = _Block(3, 8, 1), _Block(8, 16, 2), _Block(16, 16, 1)
        self.gate = torch.nn.Parameter(torch.randn(16))
        self.head = torch.nn.Linear(16, 7)
        if kind == "table names an uncalled module":
            self.feature_stages = {"stage1": "b1", "stage2": "b2", "stage3": "spare"}

    def forward(self, x):
        x = self.b2(self.b1(x))
        if self.kind == "stage changed in place after its block":
            x.mul_(2)
        if self.kind == "activation last called on a vector":
            x = x * self.b2.act(self.gate).view(1, -1, 1, 1)
        emb = x.mean((2, 3))
        if self.kind == "pooled map's module reused on the embedding":
            emb = self.b2.act(emb)
        if self.kind == "head applied as a function":
            return F.linear(emb, self.head.weight, self.head.bias)
        logits = self.head(emb)
        if self.kind == "pooled map's module called after the head":
            logits = logits + 0 * self.b2(self.b1(x[:, :3].repeat(1, 1, 2, 2))).mean()
        return logits


@pytest.mark.parametrize(
    "kind",
    [
        "stage changed in place after its block",
        "activation last called on a vector",
        "pooled map's module reused on the embedding",
        "head applied as a function",
        "pooled map's module called after the head",
        "table names an uncalled module",
    ],
)
def test_one_probe_forward_equals_a_tap_on_models_that_call_modules_oddly(kind):
    """Where one forward cannot keep an output as a ``Tap`` takes it (a module called again after the head, a
    pre-activation last taken from a vector, a head applied as a function, a table naming an uncalled module),
    ``look(...).outputs`` still returns the ``Tap``'s tensors: bit for bit, same keys, same order."""
    from lskd_bench.outputs import look, probe_outputs

    torch.manual_seed(0)
    m = _Odd(kind)
    x = torch.randn(2, 3, 16, 16)
    seen = look(m, x, keep=True, preacts=True)
    layout = describe(m, x)
    assert seen.layout == layout
    for wanted in (layout.names(), ["stages"], ["preact_stages"], ["pooled_map", "embedding"]):
        try:
            tapped = probe_outputs(m, layout, Tap(m, layout, wanted).names, x)
        except UsageError as exc:
            with pytest.raises(UsageError, match=re.escape(str(exc))):
                seen.outputs(m, wanted)
            continue
        ours = seen.outputs(m, wanted)
        assert list(ours) == list(tapped), wanted
        assert all(torch.equal(ours[k], tapped[k]) for k in tapped), wanted
