"""Where a CPU's time goes: the evidence behind the targets of issue 17 that `make bench` misses.

    PYTHONPATH=lib python tools/cpu_profile.py OUT.md [--configs A B] [--smoke]

1. A training step per config, moelab and the dense model with the same active parameters, in
   fp32 and bf16: ms per step, and the step's CPU time by kind of operation (torch.profiler,
   self time): matmuls, attention, the MoE's routing and dispatch, dtype conversions, the
   optimizer and clipping, the rest. The matmuls' own FLOP rate is set against the fp32 and
   bf16 matmul peaks measured here: MFU can reach at most the matmul rate times their share.
2. The routed experts' matmuls (8 blocks of equal rows, as a balanced layer sees them)
   against one dense matmul of the same FLOPs, fp32 and bf16.
3. Decoding one token at batch 1 on 1 thread (the `cpu` preset's model; config B at window
   256), by the model's cached forward and by the TokenDecoder generation uses: ms per token,
   the operations a token runs and their time by kind, and the fixed cost of one call of
   each kind at decoding's sizes.

Everything runs in one process on the threads torch picks (decoding: 1). ``--smoke``: tiny
sizes, to check the script.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch.profiler import profile

from moelab.nn.kv_cache import KVCache
from moelab.bench.configs import CONFIGS
from moelab.bench.training import build, random_batches, training_step
from moelab.generate.decoder import TokenDecoder
from moelab.bench.flops import train_flops_per_token
from moelab.nn.model import Transformer
from moelab.config.presets import preset
from moelab.timing import interleaved, matmul_peak

KINDS = {  # the kind of each operation, by name; everything else is "other"
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addmv", "aten::mv"),
    "attention": ("aten::scaled_dot_product", "aten::_scaled_dot_product", "aten::_flash_attention"),
    "routing and dispatch": ("aten::topk", "aten::argsort", "aten::sort", "aten::index_select", "aten::index_add_",
                             "aten::gather", "aten::scatter", "aten::index", "aten::cumsum", "aten::one_hot"),
    "copies and dtype conversions": ("aten::_to_copy", "aten::copy_"),
    "optimizer and clipping": ("aten::_fused_adam", "aten::_foreach"),
    "GELU": ("aten::gelu",),
}


def kind_of(name: str) -> str:
    return next((kind for kind, names in KINDS.items() if any(name.startswith(n) for n in names)), "other")


def _ms(fn, repeats: int) -> float:
    """Median ms per call of ``fn`` over ``repeats`` calls, after two warm-up calls."""
    return statistics.median(interleaved({"fn": fn}, repeats, 1, torch.device("cpu"))["fn"]) * 1e3


def by_kind(fn, calls: int) -> tuple[pd.DataFrame, float]:
    """Self CPU ms and calls per ``fn()`` by kind of operation, and the matmuls' FLOP per call."""
    with profile(with_flops=True) as prof:
        for _ in range(calls):
            fn()
    rows, flops = [], 0.0
    for e in prof.key_averages():
        if e.key.startswith("aten::"):
            rows.append({"kind": kind_of(e.key), "ms": e.self_cpu_time_total / 1e3 / calls, "calls": e.count / calls})
            flops += (e.flops or 0) / calls if kind_of(e.key) == "matmul" else 0
    table = pd.DataFrame(rows).groupby("kind").sum()
    table["share"] = table["ms"] / table["ms"].sum()
    return table.sort_values("ms", ascending=False), flops


def training(configs: list[str], repeats: int, peaks: dict[str, float]) -> list[str]:
    text, rows = ["## 1. A training step, by kind of operation", ""], []
    for name in configs:
        bench = CONFIGS[name]
        batch = random_batches(bench, torch.device("cpu"))
        tokens = bench.batch * bench.window
        for kind in ("moelab", "dense"):
            for precision in peaks:
                step = training_step(build(kind, bench, torch.device("cpu")), kind, precision, torch.device("cpu"), batch)
                ms = _ms(step, repeats)
                table, flops = by_kind(step, 2)
                config = bench.model_config() if kind == "moelab" else bench.model_config().dense_equivalent()
                matmul_ms = table.loc["matmul", "ms"]
                rows.append({
                    "config": name, "variant": f"{kind} {precision}", "ms/step": ms,
                    "MFU": train_flops_per_token(config, bench.window) * tokens / (ms / 1e3) / peaks[precision],
                    "matmul rate / peak": flops / (matmul_ms / 1e3) / peaks[precision],
                    **{f"{k} share": table.loc[k, "share"] if k in table.index else 0.0 for k in KINDS},
                    "other share": table.loc["other", "share"] if "other" in table.index else 0.0,
                })  # fmt: skip
                print(rows[-1], flush=True)
    text += [pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3g"), ""]
    return text


def expert_matmuls(rows: int, d: int, h: int, experts: int, repeats: int) -> list[str]:
    text, table = ["## 2. The experts' matmuls against one dense matmul of the same FLOPs", ""], []
    for dtype in (torch.float32, torch.bfloat16):
        x, w = torch.randn(experts * rows, d, dtype=dtype), torch.randn(experts, d, h, dtype=dtype)
        dense_w = torch.randn(d, h, dtype=dtype)
        blocks = x.view(experts, rows, d)
        variants = {
            "one dense matmul": lambda: x @ dense_w,
            "a matmul per expert (loop)": lambda: [blocks[e] @ w[e] for e in range(experts)],
            "one bmm of equal blocks": lambda: torch.bmm(blocks, w),
        }
        for name, fn in variants.items():
            ms = _ms(fn, repeats)
            table.append({"dtype": str(dtype).removeprefix("torch."), "variant": name, "ms": ms,
                          "GFLOP/s": 2 * experts * rows * d * h / ms / 1e6})  # fmt: skip
    text += [f"{experts} experts × ({rows}×{d}) @ ({d}×{h}), torch's threads", "",
             pd.DataFrame(table).to_markdown(index=False, floatfmt=".3g"), ""]  # fmt: skip
    return text


def decoding(models: dict[str, Transformer], tokens: int) -> list[str]:
    """ms per token and operations per token of the model's cached forward and of the TokenDecoder."""
    text = ["## 3. Decoding one token at batch 1, 1 thread", ""]
    summary, kinds = [], {}
    for name, model in models.items():
        model.eval()
        W = model.config.context_window
        cache = KVCache(model.config, 1, torch.device("cpu"), torch.float32)
        prompt = torch.randint(0, model.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(2))
        decoder = TokenDecoder(model)
        paths = {
            "model's forward": lambda model=model, cache=cache, prompt=prompt: model(prompt[:, -1:], kv_cache=cache),
            "TokenDecoder": lambda decoder=decoder, cache=cache, prompt=prompt: decoder(int(prompt[0, -1]), cache),
        }
        with torch.no_grad():
            model(prompt, kv_cache=cache)
            for path, one_token in paths.items():

                def step(one_token=one_token, cache=cache, W=W) -> None:
                    if cache.length >= W:
                        cache.length = 16  # stay inside the window: later positions overwrite the same slots
                    one_token()

                ms = _ms(lambda step=step: [step() for _ in range(tokens)], 3) / tokens
                table, _ = by_kind(step, tokens)
                kinds[f"{name}, {path}"] = table
                summary.append({"model": name, "path": path, "ms/token": ms, "tokens/s": 1e3 / ms,
                                "aten calls/token": table["calls"].sum(), "matmuls/token": table.loc["matmul", "calls"]})  # fmt: skip
    text += [pd.DataFrame(summary).to_markdown(index=False, floatfmt=".3g"), ""]
    for name, table in kinds.items():
        text += [f"{name}: self CPU ms per token by kind (under the profiler, which adds its own cost per call)", "",
                 table.to_markdown(floatfmt=".3g"), ""]  # fmt: skip
    return text


def call_costs(d: int, repeats: int, n: int = 2000) -> list[str]:
    """The fixed cost of one call at decoding's sizes (a row of d or 2d values), 1 thread."""
    x, w, b, h = torch.randn(1, d), torch.randn(3 * d, d), torch.randn(3 * d), torch.randn(1, 2 * d)
    w_in_out = w.T.contiguous()
    q, keys = torch.randn(1, 4, 1, d // 4), torch.randn(1, 4, 64, d // 4)
    calls = {
        f"F.linear (1×{d}) to {3 * d}, nn.Linear's layout, bias": lambda: F.linear(x, w, b),
        f"torch.addmm (1×{d}) to {3 * d}, x·W layout, bias": lambda: torch.addmm(b, x, w_in_out),
        f"add, {2 * d} values": lambda: h + h,
        f"F.gelu (exact), {2 * d} values: oneDNN's kernel (ATen's choice for contiguous fp32)": lambda: F.gelu(h),
        f"F.gelu (exact), {2 * d} values, oneDNN off: ATen's own kernel": lambda: F.gelu(h),
        f"F.layer_norm, {d} values": lambda: F.layer_norm(x, (d,)),
        f"scaled_dot_product_attention, 4 heads of {d // 4}, 1 query, 64 keys": lambda: F.scaled_dot_product_attention(q, keys, keys),
        "topk, 2 of 8": lambda: torch.topk(h[:, :8], 2),
    }
    rows = []
    for name, fn in calls.items():
        with torch.backends.mkldnn.flags(enabled="oneDNN off" not in name):
            us = _ms(lambda fn=fn: [fn() for _ in range(n)], repeats) / n * 1e3
        rows.append({"call": name, "µs": us})
    return ["Fixed cost of one call, 1 thread (µs, median of rounds of 2,000 calls)", "",
            pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3g"), ""]  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--configs", nargs="+", default=["A", "B"], choices=list(CONFIGS))
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    repeats = 2 if args.smoke else 5
    name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), "unknown CPU")  # fmt: skip
    text = [f"# Where the CPU's time goes: {name}, torch {torch.__version__}, {torch.get_num_threads()} threads", ""]
    bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    dtypes = {"fp32": torch.float32, **({"bf16": torch.bfloat16} if bf16 else {})}
    peaks = {p: matmul_peak(dtype, torch.device("cpu"), repeats=1 if args.smoke else 5) for p, dtype in dtypes.items()}
    text += ["Matmul peaks measured here: " + ", ".join(f"{p} {v / 1e9:.0f} GFLOP/s" for p, v in peaks.items()), ""]
    text += training(["A"] if args.smoke else args.configs, repeats, peaks)
    text += expert_matmuls(64 if args.smoke else 512, 128 if args.smoke else 256, 256 if args.smoke else 1024, 8, repeats)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    models = {"cpu preset": Transformer(preset("cpu").model)}
    if not args.smoke:
        models["config B, window 256"] = Transformer(CONFIGS["B"].model_config(context_window=256))
    text += decoding(models, 20 if args.smoke else 100)
    text += call_costs(128, repeats)
    args.out.write_text("\n".join(text) + "\n")
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
