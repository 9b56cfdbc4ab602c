"""Task cifar100 on a generated cifar-100-python folder in the release's pickle format; the CIFAR architectures
(parameter counts, the shared cifar_teachers key layout, --teacher-checkpoint); per-pair recipes."""

from __future__ import annotations

import hashlib
import json
import pickle

import pytest
import torch

from lskd_bench.cifar_models import CIFAR_ARCHS, MobileNetV1, build_cifar_model
from lskd_bench.errors import UsageError
from lskd_bench.runners.grid import resolve
from lskd_bench.tasks import get_task
from lskd_bench.tasks.base import BatchRequest
from lskd_bench.tasks.cifar import MEAN, STD, augment_params, crop_flip

from ..fixtures import edit_cifar_train, make_cifar100


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    make_cifar100(root)
    return root


def _cfg(root, **over):
    return resolve("cifar100", {}, {"data": {"root": str(root)}, **over}).cfg


# ----------------------------------------------------------------------------------------------- data
def test_reads_the_release_pickles(cifar_root):
    task = get_task("cifar100")
    data = task.load_data(_cfg(cifar_root))
    with open(cifar_root / "cifar-100-python" / "train", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert len(data.train) == 600 and len(data.val) == 200 and data.num_classes == 100
    assert data.class_names[:3] == ["apple", "pear", "bus"]
    assert data.train.y.tolist() == raw[b"fine_labels"]
    # row i of 'data' is 1024 R, then G, then B values of image i, row-major
    row = raw[b"data"][7]
    assert data.train.raw[7, 1, 2, 5].item() == row[1024 + 2 * 32 + 5]
    # evaluation images: ToTensor + Normalize(MEAN, STD) of the same pixels
    x, _ = data.val[3]
    want = (data.val.raw[3].float() / 255 - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    assert torch.allclose(x, want, atol=1e-6)


def test_parent_or_folder_itself(cifar_root):
    a = get_task("cifar100").load_data(_cfg(cifar_root))
    b = get_task("cifar100").load_data(_cfg(cifar_root / "cifar-100-python"))
    assert torch.equal(a.train.raw, b.train.raw)


def test_run_reads_the_pickles_once_while_they_are_unchanged(tmp_path, monkeypatch):
    import os

    from lskd_bench.tasks import cifar

    make_cifar100(tmp_path)
    reads = []
    real = cifar.read_split
    monkeypatch.setattr(cifar, "read_split", lambda d, name, k: reads.append(name) or real(d, name, k))
    task, cfg = get_task("cifar100"), _cfg(tmp_path)
    task.check_layout(cfg)  # what 'run' does before writing anything, then it trains from load_data
    data = task.load_data(cfg)
    assert reads == ["train", "test"]
    train = tmp_path / "cifar-100-python" / "train"
    st = train.stat()
    os.utime(train, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # the file changed: read again
    again = task.load_data(cfg)
    assert reads == ["train", "test", "train", "test"] and torch.equal(again.train.raw, data.train.raw)


@pytest.mark.parametrize(
    "damage, needle",
    [
        ("missing_dir", "does not exist"),
        ("no_meta", "lacks meta"),
        ("garbage", "is not a CIFAR python pickle"),
        ("bad_shape", "must be uint8 rows of 3072"),
        ("bad_label", "fine_labels outside 0..99"),
    ],
)
def test_bad_folders_are_one_line_errors(tmp_path, cli, damage, needle):
    d = make_cifar100(tmp_path, per_class=(1, 1))
    if damage == "missing_dir":
        root = tmp_path / "nowhere"
    else:
        root = tmp_path
        if damage == "no_meta":
            (d / "meta").unlink()
        elif damage == "garbage":
            (d / "test").write_bytes(b"\x00not a pickle")
        else:
            with open(d / "train", "rb") as f:
                raw = pickle.load(f, encoding="bytes")
            if damage == "bad_shape":
                raw[b"data"] = raw[b"data"][:, :100]
            else:
                raw[b"fine_labels"][0] = 100
            with open(d / "train", "wb") as f:
                pickle.dump(raw, f)
    rc, _out, err = cli(
        "run", "--task", "cifar100", "--data-root", str(root), "--out", str(tmp_path / "runs"), "--no-progress"
    )
    assert rc == 2, err
    assert err.startswith("lskd-bench: error: ") and needle in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "damage, needle",
    [
        ("truncated_test", "is not a CIFAR python pickle"),
        ("garbage_meta", "is not a CIFAR python pickle"),
        ("meta_without_names", "lacks 'fine_label_names'"),
        ("test_without_labels", "lacks 'fine_labels'"),
    ],
)
@pytest.mark.parametrize("dry_run", [True, False])
def test_damaged_pickles_stop_run_and_dry_run_before_anything_is_written(tmp_path, cli, damage, needle, dry_run):
    d = make_cifar100(tmp_path, per_class=(1, 1))
    if damage == "truncated_test":
        blob = (d / "test").read_bytes()
        (d / "test").write_bytes(blob[: len(blob) // 2])
    elif damage == "garbage_meta":
        (d / "meta").write_bytes(b"garbage, not a pickle")
    elif damage == "meta_without_names":
        with open(d / "meta", "wb") as f:
            pickle.dump({b"coarse_label_names": [b"x"]}, f)
    else:
        with open(d / "test", "rb") as f:
            raw = pickle.load(f, encoding="bytes")
        del raw[b"fine_labels"]
        with open(d / "test", "wb") as f:
            pickle.dump(raw, f)
    out = tmp_path / "runs"
    rc, stdout, err = cli(
        "run",
        "--task",
        "cifar100",
        "--data-root",
        str(tmp_path),
        "--out",
        str(out),
        "--no-progress",
        *(["--dry-run"] if dry_run else []),
    )
    assert rc == 2 and stdout == "", (rc, stdout, err)
    assert err.startswith("lskd-bench: error: cifar100: ") and needle in err and len(err.strip().splitlines()) == 1
    assert [p for p in out.rglob("*") if p.is_file()] == []  # no configs, no teacher folder


# -------------------------------------------------------------------------------------- augmentation
def test_crop_flip_is_torchvision_crop_then_flip():
    import torchvision.transforms.functional as TF

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=g)
    xp = torch.nn.functional.pad(x, (4, 4, 4, 4))
    params = torch.tensor([[0, 0, 0], [8, 8, 1], [3, 5, 0], [7, 1, 1], [4, 4, 0]])
    out = crop_flip(xp, params)
    for i, (dy, dx, flip) in enumerate(params.tolist()):
        want = TF.crop(TF.pad(x[i], [4]), dy, dx, 32, 32)  # RandomCrop(32, padding=4) at offset (dy, dx)
        assert torch.equal(out[i], TF.hflip(want) if flip else want)
    assert torch.equal(out[4], x[4])  # the centred, unflipped crop is the image


def test_augmentation_is_a_function_of_seed_epoch_and_index():
    idx = torch.arange(50_000)
    p = augment_params(idx, seed=3, epoch=7)
    # the same sample gets the same crop in any batch order
    perm = torch.randperm(50_000, generator=torch.Generator().manual_seed(1))[:64]
    assert torch.equal(augment_params(perm, 3, 7), p[perm])
    # every offset and both flips occur, close to uniformly
    for col, k in ((0, 9), (1, 9), (2, 2)):
        counts = torch.bincount(p[:, col], minlength=k).float() / len(idx)
        assert counts.numel() == k and (counts - 1 / k).abs().max() < 0.01
    assert not torch.equal(augment_params(idx, 3, 8), p) and not torch.equal(augment_params(idx, 4, 7), p)


def test_resumed_epoch_sees_the_same_batches(cifar_root):
    task = get_task("cifar100")
    cfg = _cfg(cifar_root)
    data = task.load_data(cfg)
    cpu = torch.device("cpu")

    def batches(start):
        return [
            task.to_device(b, cpu, cfg)
            for b in task.train_batches(data, cfg["student"], cfg, BatchRequest(seed=1, epoch=2, start=start))
        ]

    full, tail = batches(0), batches(4)
    assert len(full) == 600 // 64 and len(tail) == len(full) - 4
    for (xa, ya), (xb, yb) in zip(full[4:], tail):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # augmented: each sample is RandomCrop(32, padding=4) + flip (torchvision's, at the sample's own offsets) of
    # its image, normalised, not the plain normalised image
    import torchvision.transforms.functional as TF

    from lskd_bench.tasks.base import batch_plan

    x0, y0 = full[0]
    assert x0.shape == (64, 3, 32, 32) and x0.dtype == torch.float32
    idx = batch_plan(600, 64, shuffle=True, seed=1, epoch=2, drop_last=True)[0]
    assert torch.equal(y0, data.train.y[idx])
    mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
    changed = 0
    for k, (i, (dy, dx, flip)) in enumerate(zip(idx.tolist(), augment_params(idx, 1, 2).tolist())):
        want = TF.crop(TF.pad(data.train.raw[i], [4]), dy, dx, 32, 32)
        want = TF.hflip(want) if flip else want
        assert torch.allclose(x0[k], (want.float() / 255 - mean) / std, atol=1e-5), k
        changed += not torch.allclose(x0[k], (data.train.raw[i].float() / 255 - mean) / std, atol=1e-5)
    assert changed > 32  # most samples moved or flipped


# --------------------------------------------------------------------------------------- architectures
# Exact counts of each definition (mdistiller@a08d46f mdistiller/models/cifar/*.py, 100 classes; checked equal,
# state dict and outputs, against that code), and the counts the CIFAR KD literature's tables give, in millions
# (e.g. 7.43 M resnet32x4, 1.23 M resnet8x4, 2.26 M wrn_40_2; rounded or truncated to 0.01 M).
PARAMS = {
    "resnet8": (83_892, None),
    "resnet14": (181_108, None),
    "resnet20": (278_324, 0.28),
    "resnet32": (472_756, 0.47),
    "resnet44": (667_188, None),
    "resnet56": (861_620, 0.86),
    "resnet110": (1_736_564, 1.74),
    "resnet8x4": (1_233_540, 1.23),
    "resnet32x4": (7_433_860, 7.43),
    "ResNet50": (23_705_252, 23.71),
    "wrn_16_1": (180_916, None),
    "wrn_16_2": (703_284, 0.70),
    "wrn_40_1": (569_780, 0.57),
    "wrn_40_2": (2_255_156, 2.26),
    "vgg8": (3_965_028, 3.96),
    "vgg11": (9_277_284, None),
    "vgg13": (9_462_180, 9.46),
    "vgg16": (14_774_436, None),
    "vgg19": (20_086_692, None),
    "ShuffleV1": (949_258, 0.95),
    "ShuffleV2": (1_355_528, 1.36),
    "MobileNetV2": (812_836, 0.81),
}


def test_parameter_counts():
    assert set(PARAMS) == set(CIFAR_ARCHS)
    for arch, (exact, published) in PARAMS.items():
        n = sum(p.numel() for p in build_cifar_model(arch, 100).parameters())
        assert n == exact, arch
        if published is not None:
            assert abs(n / 1e6 - published) <= 0.0101, arch  # tables round or truncate to 0.01 M
    assert sum(p.numel() for p in MobileNetV1(1000).parameters()) == 4_231_976  # ImageNet MobileNet-V1, 4.2M


# sha256 (first 16 hex digits) of each model's state_dict "key:shape" lines, recorded at b9ee720: the layout the
# shared cifar_teachers checkpoints load into. Named outputs are hooks (parameter-free modules at most), never weights.
STATE_DICT_KEYS = {
    "resnet8": "ac039310c98e68d8",
    "resnet14": "92530df46a51a173",
    "resnet20": "48702a589dcc22ab",
    "resnet32": "e488f60b23a4db1c",
    "resnet44": "fcf7a5a278e22506",
    "resnet56": "1d3465ca54c565c3",
    "resnet110": "932a055377884f91",
    "resnet8x4": "4b191cfaf50907ea",
    "resnet32x4": "670cd82105052059",
    "ResNet50": "01c941c55d8830fa",
    "wrn_16_1": "cc273e84a60cb768",
    "wrn_16_2": "28fc720be1913fd2",
    "wrn_40_1": "f8967803e64be646",
    "wrn_40_2": "029bbe2cbcd6d721",
    "vgg8": "792c36c85a183c23",
    "vgg11": "7edcbfd7d4b24633",
    "vgg13": "adbafd0e22ce9038",
    "vgg16": "4b0f395fe5fbd954",
    "vgg19": "0820bef0b1c3cee0",
    "ShuffleV1": "542ef1e4af09fe27",
    "ShuffleV2": "db138f467cd82af3",
    "MobileNetV2": "67dd5adb2196190e",
    "MobileNetV1": "2f621f7d6f95b957",
}


def test_state_dict_keys_and_shapes_are_unchanged():
    assert set(STATE_DICT_KEYS) == {*CIFAR_ARCHS, "MobileNetV1"}
    for arch, digest in STATE_DICT_KEYS.items():
        with torch.device("meta"):
            m = MobileNetV1(1000) if arch == "MobileNetV1" else build_cifar_model(arch, 100)
        lines = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in m.state_dict().items())
        assert hashlib.sha256(lines.encode()).hexdigest()[:16] == digest, arch


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet8", "wrn_16_1", "vgg8", "ShuffleV1", "ShuffleV2", "MobileNetV2"])
def test_features_and_head_make_the_logits(arch):
    torch.manual_seed(0)
    m = build_cifar_model(arch, 100).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        f = m.features(x)
        assert f.ndim == 2 and f.shape[1] == m.head.in_features
        assert torch.allclose(m.head(f), m(x))


def _bn(prefix: str, c: int) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.weight": torch.rand(c) + 0.5,
        f"{prefix}.bias": torch.randn(c) * 0.1,
        f"{prefix}.running_mean": torch.randn(c) * 0.1,
        f"{prefix}.running_var": torch.rand(c) + 0.5,
        f"{prefix}.num_batches_tracked": torch.tensor(1000),
    }


def shared_resnet8x4_checkpoint() -> dict:
    """A checkpoint as RepDistiller's train_teacher.py saves it ({'epoch', 'model', 'accuracy', 'optimizer'}) with
    the key names and shapes of its resnet8x4 (one basic block per stage, projection ``downsample`` in each),
    written out here by hand."""
    g = torch.Generator().manual_seed(0)
    sd = {"conv1.weight": torch.randn(32, 3, 3, 3, generator=g) * 0.1, **_bn("bn1", 32)}
    cin = 32
    for i, c in enumerate((64, 128, 256), 1):
        p = f"layer{i}.0"
        sd.update(
            {
                f"{p}.conv1.weight": torch.randn(c, cin, 3, 3, generator=g) * 0.05,
                **_bn(f"{p}.bn1", c),
                f"{p}.conv2.weight": torch.randn(c, c, 3, 3, generator=g) * 0.05,
                **_bn(f"{p}.bn2", c),
                f"{p}.downsample.0.weight": torch.randn(c, cin, 1, 1, generator=g) * 0.1,
                **_bn(f"{p}.downsample.1", c),
            }
        )
        cin = c
    sd.update({"fc.weight": torch.randn(100, 256, generator=g) * 0.05, "fc.bias": torch.zeros(100)})
    return {"epoch": 240, "model": sd, "accuracy": 79.42, "optimizer": {"state": {}, "param_groups": []}}


@pytest.mark.slow
def test_shared_teacher_checkpoint_loads_through_cli(cifar_root, tmp_path, cli):
    ckpt = shared_resnet8x4_checkpoint()
    path = tmp_path / "resnet8x4_vanilla" / "ckpt_epoch_240.pth"
    path.parent.mkdir()
    torch.save(ckpt, path)
    out = tmp_path / "runs"
    rc, _, err = cli(
        "run",
        "--task",
        "cifar100",
        "--data-root",
        str(cifar_root),
        "--out",
        str(out),
        "--set",
        "teacher.arch=resnet8x4",
        "--set",
        "student.arch=resnet8",
        "--teacher-checkpoint",
        str(path),
        "--alphas",
        "0",
        "--temperatures",
        "4",
        "--epochs",
        "1",
        "--no-baseline",
        "--no-progress",
    )
    assert rc == 0, err
    (tdir,) = (out / "cifar100").glob("teacher_resnet8x4_*")
    saved = torch.load(tdir / "model.pt", weights_only=True)
    assert set(saved) == set(ckpt["model"])
    for k, v in ckpt["model"].items():
        assert torch.equal(saved[k], v), k
    (sdir,) = (out / "cifar100").glob("student_kd_resnet8_*")
    assert json.loads((sdir / "result.json").read_text())["metrics"]["top1"] >= 0
    # a checkpoint of another architecture is refused, not half-loaded
    rc, _, err = cli(
        "run",
        "--task",
        "cifar100",
        "--data-root",
        str(cifar_root),
        "--out",
        str(tmp_path / "runs2"),
        "--set",
        "teacher.arch=resnet32x4",
        "--teacher-checkpoint",
        str(path),
        "--alphas",
        "0",
        "--temperatures",
        "4",
        "--epochs",
        "1",
        "--no-baseline",
        "--no-progress",
    )
    assert rc == 2 and "lacks" in err and "of the model's" in err and len(err.strip().splitlines()) == 1, err


# ------------------------------------------------------------------------------------------- recipes
def test_default_recipe_is_mdistillers(cifar_root):
    cfg = _cfg(cifar_root)
    assert cfg["pair"] == "resnet32x4-resnet8x4"
    assert (cfg["teacher"]["arch"], cfg["student"]["arch"]) == ("resnet32x4", "resnet8x4")
    s = cfg["student"]
    assert (s["epochs"], s["batch_size"], s["lr"], s["momentum"], s["weight_decay"], s["milestones"], s["gamma"]) == (
        240,
        64,
        0.05,
        0.9,
        5e-4,
        [150, 180, 210],
        0.1,
    )
    assert s["schedule"] == "multistep" and s["decay_norm_and_bias"] and not s["nesterov"]
    assert cfg["kd"]["lambda"] == 0.9 and 4.0 in cfg["grid"]["temperatures"]
    assert (cfg["dkd"]["beta"], cfg["dkd"]["warmup"]) == (8.0, 20)


@pytest.mark.parametrize(
    "pair, teacher, student, lr, beta",
    [
        ("resnet56-resnet20", "resnet56", "resnet20", 0.05, 2.0),
        ("vgg13-vgg8", "vgg13", "vgg8", 0.05, 6.0),
        ("wrn_40_2-ShuffleV1", "wrn_40_2", "ShuffleV1", 0.01, 8.0),
        ("vgg13-MobileNetV2", "vgg13", "MobileNetV2", 0.01, 6.0),
    ],
)
def test_pair_recipes(cifar_root, tmp_path, pair, teacher, student, lr, beta):
    res = resolve("cifar100", {}, {"data": {"root": str(cifar_root)}, "pair": pair})
    cfg = res.cfg
    assert (cfg["teacher"]["arch"], cfg["student"]["arch"], cfg["student"]["lr"], cfg["dkd"]["beta"]) == (
        teacher,
        student,
        lr,
        beta,
    )
    assert cfg["teacher"]["lr"] == 0.05
    assert res.provenance["student.arch"].startswith(f"pair {pair}")
    # the same pair from a config file; the file's own values and --set still win over the pair's
    res = resolve(
        "cifar100", {"pair": pair, "student": {"lr": 0.02}}, {"data": {"root": str(cifar_root)}, "dkd": {"beta": 1.0}}
    )
    assert (res.cfg["student"]["arch"], res.cfg["student"]["lr"], res.cfg["dkd"]["beta"]) == (student, 0.02, 1.0)


@pytest.mark.parametrize(
    "pair, beta",
    [
        ("resnet32x4-ShuffleV2", 8.0),  # ReviewKD@cede6ea CIFAR-100/script/reviewKD.sh:11
        ("resnet56-resnet20", 0.6),  # :13
        ("resnet110-resnet32", 1.0),  # :15
        ("resnet32x4-resnet8x4", 5.0),  # :7
        ("wrn_40_2-ShuffleV1", 5.0),  # :5
        ("vgg13-vgg8", 5.0),  # no command for this pair: the schema's (mdistiller reviewkd.yaml:10)
    ],
)
def test_pair_applies_reviewkds_published_weight(cifar_root, pair, beta):
    res = resolve("cifar100", {}, {"data": {"root": str(cifar_root)}, "pair": pair})
    assert res.cfg["reviewkd"]["beta"] == beta
    if beta != 5.0:
        assert res.provenance["reviewkd.beta"].startswith(f"pair {pair}")
    # an explicit setting wins over the pair's, from the command line or a config file
    over = resolve("cifar100", {}, {"data": {"root": str(cifar_root)}, "pair": pair, "reviewkd": {"beta": 2.5}})
    assert over.cfg["reviewkd"]["beta"] == 2.5 and over.provenance["reviewkd.beta"] == "command line"
    over = resolve("cifar100", {"pair": pair, "reviewkd": {"beta": 3.0}}, {"data": {"root": str(cifar_root)}})
    assert over.cfg["reviewkd"]["beta"] == 3.0


def test_reviewkd_and_ofd_teachers_run_in_their_authors_mode(cifar_root):
    cfg = _cfg(cifar_root, pair="resnet56-resnet20")
    # ReviewKD@cede6ea CIFAR-100/train.py never calls teacher.eval(); overhaul-distillation@76344a8
    # CIFAR-100/train_with_distillation.py:75 d_net.t_net.train()
    assert (cfg["reviewkd"]["teacher_mode"], cfg["ofd"]["teacher_mode"]) == ("train", "train")
    # elsewhere ReviewKD's teacher is in eval mode (its ImageNet/imagenet_amp.py:358), OFD's in train mode
    digits = resolve("digits", {}, {}).cfg
    assert (digits["reviewkd"]["teacher_mode"], digits["ofd"]["teacher_mode"]) == ("eval", "train")
    over = _cfg(cifar_root, reviewkd={"teacher_mode": "eval"}, ofd={"teacher_mode": "eval"})
    assert (over["reviewkd"]["teacher_mode"], over["ofd"]["teacher_mode"]) == ("eval", "eval")
    with pytest.raises(UsageError, match=r"reviewkd\.teacher_mode must be one of eval, train"):
        _cfg(cifar_root, reviewkd={"teacher_mode": "training"})


@pytest.mark.parametrize("pair", ["resnet56-resnet20", "resnet32x4-ShuffleV2", "ResNet50-vgg8"])
def test_dist_and_ctkd_get_their_authors_cifar_settings_on_every_pair(cifar_root, pair):
    res = resolve("cifar100", {}, {"data": {"root": str(cifar_root)}, "pair": pair})
    dist, ctkd = res.cfg["dist"], res.cfg["ctkd"]
    # DIST: image_classification_sota@d9662f7 configs/strategies/distill/dist_cifar.yaml:34-36 (kd: dist_t4)
    assert (dist["tau"], dist["beta"], dist["gamma"], dist["ce_weight"], dist["kd_weight"]) == (4.0, 1.0, 1.0, 1.0, 2.0)
    # CTKD: CTKD@7d52522 scripts/run_cifar_distill.sh:19 (-r 0.1 -a 0.9), :22 (0 -> -1 over 10 loops)
    assert (ctkd["ce_weight"], ctkd["kd_weight"], ctkd["grl_epochs"]) == (0.1, 0.9, 10)
    assert (ctkd["grl_start"], ctkd["grl_end"], ctkd["t_start"], ctkd["t_end"]) == (0.0, -1.0, 1.0, 20.0)
    assert res.provenance["dist.tau"] == res.provenance["ctkd.grl_epochs"] == "recipe lskd_bench/configs/cifar100.yaml"
    # an explicit setting still wins, from a config file or the command line
    res = resolve("cifar100", {"dist": {"tau": 2.0}}, {"data": {"root": str(cifar_root)}, "ctkd": {"kd_weight": 1.0}})
    assert (res.cfg["dist"]["tau"], res.cfg["ctkd"]["kd_weight"], res.cfg["ctkd"]["ce_weight"]) == (2.0, 1.0, 0.1)
    # other tasks keep the authors' ImageNet defaults (the schema's)
    digits = resolve("digits", {}, {}).cfg
    assert (digits["dist"]["tau"], digits["ctkd"]["ce_weight"], digits["ctkd"]["kd_weight"]) == (1.0, 1.0, 1.0)
    assert digits["ctkd"]["grl_epochs"] == 5


def test_unknown_pair_and_pairs_on_other_tasks(cifar_root, cli):
    with pytest.raises(UsageError, match=r"unknown pair 'resnet32x4-resnet8' .*did you mean resnet32x4-resnet8x4"):
        resolve("cifar100", {}, {"data": {"root": str(cifar_root)}, "pair": "resnet32x4-resnet8"})
    rc, _, err = cli("config", "--task", "digits", "--pair", "resnet56-resnet20")
    assert rc == 2 and "task digits has no teacher-student pairs" in err
    rc, out, _ = cli("tasks")
    assert rc == 0 and "pairs (--pair): resnet56-resnet20, resnet110-resnet32, resnet32x4-resnet8x4" in out


# ------------------------------------------------------------------------------------ imagenet pairs
@pytest.mark.parametrize(
    "pair, teacher, student, beta",
    [("resnet34-resnet18", "resnet34", "resnet18", 0.5), ("resnet50-mobilenet_v1", "resnet50", "mobilenet_v1", 2.0)],
)
def test_imagenet_pairs_use_mdistillers_recipe(imagenet_root, pair, teacher, student, beta):
    cfg = resolve("imagenet", {}, {"data": {"root": str(imagenet_root)}, "pair": pair}).cfg
    s = cfg["student"]
    assert (cfg["teacher"]["arch"], s["arch"], cfg["dkd"]["beta"], cfg["kd"]["lambda"]) == (teacher, student, beta, 0.5)
    assert (
        s["epochs"],
        s["batch_size"],
        s["lr"],
        s["schedule"],
        s["milestones"],
        s["warmup_epochs"],
        s["weight_decay"],
    ) == (100, 512, 0.2, "multistep", [30, 60, 90], 0, 1e-4)
    # without --pair the imagenet recipe stays the LS-KD paper's
    base = resolve("imagenet", {}, {"data": {"root": str(imagenet_root)}}).cfg
    assert (base["pair"], base["student"]["arch"], base["student"]["epochs"]) == (None, "resnet18", 200)


@pytest.mark.slow
def test_torchvision_format_teacher_loads_strictly(tmp_path):
    import torchvision

    from lskd_bench.models import build_image_model, load_init_checkpoint

    ref = torchvision.models.resnet34(weights=None)  # what torchvision's pretrained file holds (1000 classes)
    path = tmp_path / "resnet34.pth"
    torch.save(ref.state_dict(), path)
    model = build_image_model("resnet34", 1000)
    assert load_init_checkpoint(model, path, strict=True) == len(ref.state_dict())
    assert torch.equal(model.head.weight, ref.fc.weight)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), ref.eval()(x))
    with pytest.raises(UsageError, match="lacks 2 of the model's"):  # a 3-class model: the 1000-class head is missing
        load_init_checkpoint(build_image_model("resnet34", 3), path, strict=True)
    mv1 = build_image_model("mobilenet_v1", 1000)
    assert mv1(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_cifar_without_train_images_stops_run_as_check_data_does(tmp_path, cli):
    """A train pickle with 0 images: check-data exits 2; run --dry-run and run used to exit 0 and train."""
    import numpy as np

    from ..fixtures import make_cifar100

    d = make_cifar100(tmp_path / "data", per_class=(1, 1))
    edit_cifar_train(d, lambda raw: raw.update({b"data": np.zeros((0, 3072), np.uint8), b"fine_labels": []}))
    base = ["--task", "cifar100", "--data-root", str(tmp_path / "data")]
    rc, out, err = cli("check-data", "--no-progress", *base)
    assert rc == 2 and "problem: train: 100 class(es) without images (e.g. apple) (it holds no images)" in out
    runs = tmp_path / "runs"
    for extra in (["--dry-run"], ["--epochs", "1", "--no-progress"]):
        rc, _, err = cli("run", "--out", str(runs), *base, *extra)
        assert rc == 2 and err == (
            f"lskd-bench: error: cifar100: {d}: train: 100 class(es) without images (e.g. apple) (it holds no images)\n"
        ), err
        assert not runs.exists()


@pytest.mark.parametrize(
    "labels, needle",
    [
        (lambda n: [3.5] + [0] * (n - 1), "fine_labels must be integers, got 3.5"),
        (lambda n: [True] * n, "fine_labels must be integers, got True"),
        (
            lambda n: [5] * (n - 1) + [-1],
            "1 fine_labels outside 0..99 (e.g. image {last}: -1)",
        ),  # not the largest valid
    ],
)
def test_cifar_labels_are_integers_in_range_and_the_example_is_a_bad_one(tmp_path, cli, labels, needle):
    from ..fixtures import make_cifar100

    d = make_cifar100(tmp_path / "data", per_class=(1, 1))
    edit_cifar_train(d, lambda raw: raw.update({b"fine_labels": labels(len(raw[b"fine_labels"]))}))
    rc, _, err = cli(
        "run", "--dry-run", "--out", str(tmp_path / "runs"), "--task", "cifar100", "--data-root", str(tmp_path / "data")
    )
    assert rc == 2 and err.count("\n") == 1 and needle.format(last=99) in err, err


@pytest.mark.slow
@pytest.mark.parametrize("pair", list(get_task("cifar100").pairs()))
def test_every_pair_dry_runs_ab_ofd_reviewkd(cifar_root, tmp_path, cli, pair):
    """Issue 33: AB, OFD and ReviewKD read pre-activations, which WRN, ShuffleNet-V1/V2 and MobileNet-V2 now give
    (RepDistiller's preact=True tensors): run's check before training (the models built, every method set up from
    a probe) accepts them on every published pair; --dry-run lists their cells and writes nothing."""
    out = tmp_path / "runs"
    argv = ["run", "--task", "cifar100", "--pair", pair, "--methods", "ab,ofd,reviewkd", "--dry-run"]
    rc, stdout, err = cli(*argv, "--data-root", str(cifar_root), "--out", str(out), "--no-progress")
    assert rc == 0, err
    cells = stdout.splitlines()
    for method in ("ab", "ofd", "reviewkd"):
        assert any(f"/student_{method}_" in c for c in cells), (method, cells)
    assert not out.exists() or [p for p in out.rglob("*") if p.is_file()] == []
