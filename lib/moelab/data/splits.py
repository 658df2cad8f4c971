"""The catalog of a corpus's works, and their assignment, whole, to the train / val / test splits."""

from __future__ import annotations

import random

import pandas as pd
from tqdm.auto import tqdm

from moelab.data.cleaning import clean_text_with_report

SPLITS = ("train", "val", "test")


def build_catalog(works: pd.DataFrame, progress: bool = True) -> tuple[pd.DataFrame, list[str]]:
    """One row per work with its sizes before and after cleaning; returns (catalog, cleaned texts)."""
    rows, cleaned_texts = [], []
    for work in tqdm(list(works.itertuples()), desc="cleaning", unit="work", disable=not progress):
        cleaned, report = clean_text_with_report(work.text)
        cleaned_texts.append(cleaned)
        rows.append(
            {
                "category": work.category,
                "work": work.work,
                "bytes": work.bytes,
                "characters": len(work.text),
                "lines": work.text.count("\n") + (0 if work.text.endswith("\n") or not work.text else 1),
                "words": len(work.text.split()),
                "sha256": work.sha256,
                "decode_issues": work.decode_issues,
                "cleaned_bytes": len(cleaned.encode("utf-8")),
                "paragraphs": cleaned.count("\n") + 1 if cleaned else 0,
                **{f"changed_{name}": count for name, count in report.items()},
            }
        )
    return pd.DataFrame(rows), cleaned_texts


def assign_splits(
    catalog: pd.DataFrame,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    seed: int = 1337,
    size_column: str = "cleaned_bytes",
    tolerance: float = 0.25,
) -> pd.Series:
    """Assign whole works to train/val/test, about the given fractions of bytes.

    Stratified by category: held-out works are drawn from the categories in turn
    (seeded shuffle), a work is taken only if it keeps the split within
    ``(1 + tolerance)`` of its byte target, and every category keeps at least one
    work in train. A split that nothing fits gets the smallest eligible work, so
    val and test are never empty when there are enough works.
    """
    _check_fractions(val_fraction, test_fraction)
    rng = random.Random(seed)
    queues = _shuffled_by_category(catalog, rng)
    categories = sorted(queues)
    rng.shuffle(categories)
    sizes = catalog[size_column]
    total = float(sizes.sum())
    held_out = _HeldOut(sizes, queues, {"val": val_fraction * total, "test": test_fraction * total}, tolerance)
    while held_out.hungry() and held_out.take_round(categories):
        pass
    held_out.fill_empty(categories)
    return held_out.split


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 < value < 0.5:
            raise ValueError(f"{name} must be in (0, 0.5), got {value!r}")
    if val_fraction + test_fraction >= 0.5:
        raise ValueError("val_fraction + test_fraction must leave most of the corpus for training (< 0.5)")


def _shuffled_by_category(catalog: pd.DataFrame, rng: random.Random) -> dict[str, list]:
    """Each category's catalog rows, in a seeded random order."""
    queues = {}
    for category, group in catalog.groupby("category", sort=True):
        order = list(group.index)
        rng.shuffle(order)
        queues[category] = order
    return queues


class _HeldOut:
    """assign_splits' state: every work's split, and how many bytes val and test hold against their targets."""

    def __init__(self, sizes: pd.Series, queues: dict[str, list], targets: dict[str, float], tolerance: float) -> None:
        self.sizes, self.queues, self.targets, self.tolerance = sizes, queues, targets, tolerance
        self.filled = {name: 0.0 for name in targets}
        self.split = pd.Series("train", index=sizes.index, dtype=object)

    def eligible(self, category: str) -> list:
        """The category's works still in train, unless taking one would leave it none there."""
        left_in_train = [i for i in self.queues[category] if self.split[i] == "train"]
        return left_in_train if len(left_in_train) > 1 else []

    def hungry(self) -> list[str]:
        """Held-out splits still below their target, less the tolerance."""
        return [s for s in self.targets if self.filled[s] < self.targets[s] * (1 - self.tolerance)]

    def take(self, index, name: str) -> None:
        self.split[index] = name
        self.filled[name] += self.sizes[index]

    def take_round(self, categories: list[str]) -> bool:
        """Each category in turn gives its next fitting work to the hungriest split; False if none was taken."""
        progressed = False
        for category in categories:
            hungry = self.hungry()
            if not hungry:
                break
            name = max(hungry, key=lambda s: (self.targets[s] - self.filled[s]) / self.targets[s])
            limit = self.targets[name] * (1 + self.tolerance)
            fits = [i for i in self.eligible(category) if self.filled[name] + self.sizes[i] <= limit]
            if fits:
                self.take(fits[0], name)
                progressed = True
        return progressed

    def fill_empty(self, categories: list[str]) -> None:
        """A held-out split that nothing fitted gets the smallest eligible work."""
        for name in self.targets:
            if self.filled[name] == 0:
                candidates = [i for c in categories for i in self.eligible(c)]
                if candidates:
                    self.take(min(candidates, key=lambda i: (self.sizes[i], i)), name)
