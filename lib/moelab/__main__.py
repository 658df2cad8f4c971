"""`python -m moelab`: what this workspace has, and a smoke run of the tiny preset."""

from __future__ import annotations

import time

import pandas as pd
import torch

from . import ByteTokenizer, Transformer, __version__, preset
from .config import presets_table


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"moelab {__version__} · torch {torch.__version__} · device {device} · {torch.get_num_threads()} threads\n")
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(presets_table().drop(columns="description").to_string(), "\n")

    torch.manual_seed(0)
    tiny = preset("tiny")
    model = Transformer(tiny.model).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tiny.train.lr)
    tokenizer = ByteTokenizer()
    data = torch.tensor(tokenizer.encode("A vida é uma ópera e uma grande ópera. " * 8), device=device)
    window = tiny.model.context_window
    start = time.perf_counter()
    for step in range(30):
        offsets = torch.randint(0, len(data) - window - 1, (8,))
        x = torch.stack([data[o : o + window] for o in offsets])
        y = torch.stack([data[o + 1 : o + window + 1] for o in offsets])
        out = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        if step % 10 == 0 or step == 29:
            print(f"tiny smoke step {step:2d}: loss {out.loss.item():.3f} (ce {out.ce_loss.item():.3f}, "
                  f"aux {out.aux_loss.item():.3f}, z {out.z_loss.item():.3f})")
    sample = model.generate(tokenizer.encode_tensor("A vida ", device), 40, temperature=0.8, seed=0)
    print(f"{time.perf_counter() - start:.1f} s · sample: {tokenizer.decode(sample[0])!r}")


if __name__ == "__main__":
    main()
