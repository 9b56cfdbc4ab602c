"""Translation throughput: target tokens/second for teacher training (label-smoothed CE), word-level KD student
training (teacher forward under inference_mode + student step) and beam-search decoding, on synthetic
batches shaped like IWSLT (sentence lengths drawn around --mean-len sub-words).

    python benchmarks/bench_nmt.py                                   # CPU: the demo's tiny models
    python benchmarks/bench_nmt.py --teacher transformer_iwslt_de_en --student transformer_iwslt_de_en_small \\
        --max-tokens 4096 --vocab 10000 --device cuda               # the IWSLT recipe (bf16 autocast on CUDA)

It prints a first line at once and one line per measured phase, then the total training FLOP estimate
per IWSLT grid when --iwslt-train-tokens is given.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from lskd_bench.methods import kd_loss, ls_cross_entropy
from lskd_bench.tasks.base import autocast
from lskd_bench.tasks.nmt import PAD
from lskd_bench.tasks.nmt import fairseq_adapter as fa


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batch(rng, vocab: int, max_tokens: int, mean_len: int, device) -> dict:
    samples, tokens, i, longest = [], 0, 0, 0
    while True:
        ls, lt = (max(2, int(rng.normal(mean_len, mean_len / 4))) for _ in range(2))
        longest = max(longest, ls, lt)
        if (len(samples) + 1) * longest > max_tokens:  # fairseq's max_tokens rule: sentences x longest side
            break
        src = torch.from_numpy(np.append(rng.integers(4, vocab, ls - 1), 2))
        tgt = torch.from_numpy(np.append(rng.integers(4, vocab, lt - 1), 2))
        samples.append({"id": i, "source": src, "target": tgt})
        tokens += lt
        i += 1
    b = fa.collate(samples, PAD, 2)
    return {k: (v.to(device) if torch.is_tensor(v) else {kk: vv.to(device) for kk, vv in v.items()} if isinstance(v, dict) else v)
            for k, v in b.items()}


def logits_of(model, b):
    net = b["net_input"]
    out, _ = model(net["src_tokens"], net["src_lengths"], net["prev_output_tokens"])
    keep = b["target"].ne(PAD)
    return out[keep], b["target"][keep]


def timed(name: str, fn, steps: int, warmup: int, tokens: int, device) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    tps = steps * tokens / (time.perf_counter() - t0)
    print(f"{name:<46} {tps:12.0f} target tokens/s", flush=True)
    return tps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", default="transformer_tiny", choices=sorted(fa.ARCHS))
    ap.add_argument("--student", default="transformer_micro", choices=sorted(fa.ARCHS))
    ap.add_argument("--vocab", type=int, default=1000)
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--mean-len", type=int, default=24, help="mean sentence length in sub-words (IWSLT14: ~24)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--iwslt-train-tokens", type=float, default=None,
                    help="target tokens per epoch of the real corpus, to print the grid's estimated hours")
    ap.add_argument("--epochs", type=int, default=50)
    args = ap.parse_args()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}; {args.teacher} -> {args.student}, vocab {args.vocab}, max_tokens {args.max_tokens}, "
          f"mean length {args.mean_len}, {'bf16 autocast' if device.type == 'cuda' else 'fp32'}", flush=True)
    cfg = {"amp": "bf16"}
    d = fa.make_dictionary(["<s>", "<pad>", "</s>", "<unk>"] + [f"w{i}" for i in range(args.vocab - 4)])
    hp = {"dropout": 0.3, "attention_dropout": 0.0, "activation_dropout": 0.0, "share_decoder_input_output_embed": True,
          "share_all_embeddings": False, "max_positions": 1024}
    rng = np.random.default_rng(0)
    b = batch(rng, args.vocab, args.max_tokens, args.mean_len, device)
    tokens = int(b["target"].ne(PAD).sum())
    teacher = fa.build_transformer(args.teacher, d, hp).to(device)
    student = fa.build_transformer(args.student, d, hp).to(device)
    print(f"batch: {b['target'].shape[0]} sentences, {tokens} target tokens; params teacher "
          f"{sum(p.numel() for p in teacher.parameters()) / 1e6:.1f} M, student {sum(p.numel() for p in student.parameters()) / 1e6:.1f} M",
          flush=True)
    t_opt = torch.optim.Adam(teacher.parameters(), lr=1e-4, betas=(0.9, 0.98))
    s_opt = torch.optim.Adam(student.parameters(), lr=1e-4, betas=(0.9, 0.98))

    def teacher_step():
        teacher.train()
        with autocast(device, cfg):
            s, y = logits_of(teacher, b)
        loss = ls_cross_entropy(s.float(), y, 0.1)
        t_opt.zero_grad(set_to_none=True)
        loss.backward()
        t_opt.step()

    def kd_step():
        teacher.eval()
        with torch.inference_mode(), autocast(device, cfg):
            t, _ = logits_of(teacher, b)
        t = t.float().clone()
        student.train()
        with autocast(device, cfg):
            s, y = logits_of(student, b)
        loss = kd_loss(s.float(), t, y, T=1.0, lam=1.0)
        s_opt.zero_grad(set_to_none=True)
        loss.backward()
        s_opt.step()

    t_tps = timed(f"teacher training ({args.teacher})", teacher_step, args.steps, args.warmup, tokens, device)
    k_tps = timed(f"KD student training ({args.student})", kd_step, args.steps, args.warmup, tokens, device)
    teacher.eval()
    gen = fa.generator(teacher, d, args.beam, 1.0, 0.0, args.mean_len * 2)
    n_sent = min(64, b["target"].shape[0])
    small = {**b, "net_input": {k: v[:n_sent] for k, v in b["net_input"].items()}, "id": b["id"][:n_sent]}
    out_tokens = {"n": 0}

    def decode():
        with torch.inference_mode(), autocast(device, cfg):
            hyps = fa.generate(gen, small)
        out_tokens["n"] = sum(len(h) + 1 for h in hyps)

    decode()
    timed(f"beam {args.beam} decoding ({args.teacher}, {n_sent} sentences)", decode, max(1, args.steps // 2), 0,
          out_tokens["n"], device)
    if args.iwslt_train_tokens:
        per_epoch_t = args.iwslt_train_tokens / t_tps
        per_epoch_s = args.iwslt_train_tokens / k_tps
        total = args.epochs * (2 * per_epoch_t + 9 * per_epoch_s) / 3600  # 2 teachers, 8 KD students + baseline
        print(f"estimated IWSLT grid ({args.epochs} epochs, 2 teachers + 9 students, unfused): {total:.1f} device-hours "
              f"(training only; evaluation and data loading not included)")


if __name__ == "__main__":
    main()
