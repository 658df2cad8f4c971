import dataclasses
import json
import math
import os

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from moelab.config.model import ModelConfig
from moelab.config.presets import PRESETS
from moelab.config.train import TrainConfig
from moelab.paths import project_root, reports_dir
from moelab.runs.files import run_reports_dir
from moelab.stats import SUMMARY_COLUMNS, conclusions, holm, summarize, t_interval
from moelab.sweep.runner import SweepError, collect, main, plan, run_sweep, sweep_dir, write_readme
from moelab.sweep.spec import SweepSpecError, builtin_studies, load_spec
from moelab.train.trainer import Trainer

REFERENCE_EXPERIMENTS = project_root() / "reports" / "reference" / "experiments"


# ----------------------------------------------------------------------------- statistics
def test_intervals_and_paired_differences_match_scipy():
    rng = np.random.default_rng(0)
    seeds = [1, 2, 3, 4, 5]
    a = 2.5 + rng.normal(0, 0.02, 5)
    b = a + 0.03 + rng.normal(0, 0.005, 5)  # clearly worse, paired
    c = a + rng.normal(0, 0.02, 5)  # noise only
    rows = [{"variant": v, "seed": s, "val_bpb": x} for v, xs in (("a", a), ("b", b), ("c", c)) for s, x in zip(seeds, xs)]
    summary = summarize(pd.DataFrame(rows)).set_index("variant")
    assert list(summarize(pd.DataFrame(rows)).columns) == SUMMARY_COLUMNS

    for name, x in (("a", a), ("b", b), ("c", c)):
        ci = scipy_stats.ttest_1samp(x, 0).confidence_interval(0.95)
        assert summary.loc[name, "mean"] == pytest.approx(x.mean())
        assert summary.loc[name, "std"] == pytest.approx(x.std(ddof=1))
        assert (summary.loc[name, "ci_low"], summary.loc[name, "ci_high"]) == pytest.approx((ci.low, ci.high))
    for name, x in (("b", b), ("c", c)):
        paired = scipy_stats.ttest_rel(x, a)
        ci = paired.confidence_interval(0.95)
        assert summary.loc[name, "diff"] == pytest.approx((x - a).mean())
        assert (summary.loc[name, "diff_ci_low"], summary.loc[name, "diff_ci_high"]) == pytest.approx((ci.low, ci.high))
        assert summary.loc[name, "p_value"] == pytest.approx(paired.pvalue)
        expected = "worse" if ci.low > 0 else "better" if ci.high < 0 else "no detectable difference"
        assert summary.loc[name, "verdict"] == expected
    assert summary.loc["b", "verdict"] == "worse" and summary.loc["a", "verdict"] == "reference"
    # lower is better: the mirror image of b is better
    flipped = summarize(pd.DataFrame(rows).assign(val_bpb=lambda t: np.where(t["variant"] == "b", 2 * a.repeat(1).mean() - t["val_bpb"], t["val_bpb"])))
    assert flipped.set_index("variant").loc["b", "verdict"] == "better"


def test_holm_adjusts_a_family_of_comparisons_and_can_overturn_a_verdict():
    # Holm's worked numbers: sorted 0.005·4, 0.01·3, 0.03·2, 0.04·1 -> 0.02, 0.03, 0.06, max(0.06, 0.04)
    assert holm([0.01, 0.04, 0.03, 0.005]).tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = holm([math.nan, 0.02, 0.5])  # the reference's NaN is no test and does not count
    assert math.isnan(adjusted[0]) and adjusted[1:].tolist() == pytest.approx([0.04, 0.5])
    # five variants against one reference: 'clear' is worse beyond any correction; 'marginal' has
    # a raw p just under 0.05 and loses its verdict after Holm over 5 comparisons
    seeds = [1, 2, 3, 4]
    ref = np.array([2.50, 2.52, 2.48, 2.51])
    offsets = {"clear": [0.10, 0.11, 0.10, 0.12], "marginal": [0.02, 0.03, 0.01, 0.04],
               "n1": [0.01, -0.01, 0.02, -0.02], "n2": [-0.01, 0.0, 0.01, 0.0], "n3": [0.0, 0.01, -0.01, 0.005]}
    rows = [{"variant": "ref", "seed": s, "val_bpb": x} for s, x in zip(seeds, ref)]
    rows += [{"variant": v, "seed": s, "val_bpb": x + d} for v, ds in offsets.items() for s, x, d in zip(seeds, ref, ds)]
    summary = summarize(pd.DataFrame(rows)).set_index("variant")
    raw = {v: scipy_stats.ttest_rel(ref + np.array(d), ref).pvalue for v, d in offsets.items()}
    order = sorted(raw, key=raw.get)  # the step-down by hand
    running = 0.0
    for i, v in enumerate(order):
        running = max(running, min(1.0, raw[v] * (len(order) - i)))
        assert summary.loc[v, "p_holm"] == pytest.approx(running)
    assert raw["marginal"] < 0.05 and summary.loc["marginal", "verdict"] == "worse"
    assert summary.loc["marginal", "verdict_holm"] == "no detectable difference"
    assert summary.loc["clear", ["verdict", "verdict_holm"]].tolist() == ["worse", "worse"]
    assert summary.loc["ref", "verdict_holm"] == "reference" and math.isnan(summary.loc["ref", "p_holm"])
    text = " ".join(conclusions(summary.reset_index()))
    assert "'marginal'" in text and "not after Holm's correction over 5 comparisons" in text
    assert "survives Holm's correction over 5 comparisons" in text


def test_pairs_use_only_the_seeds_both_variants_have_and_a_control_is_no_difference():
    rows = pd.DataFrame(
        [("ref", 1, 2.50), ("ref", 2, 2.52), ("ref", 3, 2.49),
         ("control", 1, 2.50), ("control", 2, 2.52), ("control", 3, 2.49),
         ("partial", 1, 2.60), ("partial", 3, 2.58), ("alone", 7, 2.40)],
        columns=["variant", "seed", "val_bpb"],
    )  # fmt: skip
    s = summarize(rows).set_index("variant")
    assert s.loc["control", "diff"] == 0 and s.loc["control", "diff_ci_low"] == s.loc["control", "diff_ci_high"] == 0
    assert s.loc["control", "verdict"] == "no detectable difference"
    assert s.loc["partial", "n_paired"] == 2 and s.loc["partial", "diff"] == pytest.approx((0.10 + 0.09) / 2)
    assert s.loc["alone", "n_paired"] == 0 and s.loc["alone", "verdict"] == "no detectable difference"
    assert s.loc["alone", "n"] == 1 and math.isnan(s.loc["alone", "ci_low"])
    assert t_interval([1.0]) [0] == 1.0 and math.isnan(t_interval([1.0])[2])
    text = " ".join(conclusions(summarize(rows)))
    assert "no seed in common" in text and "no detectable difference from 'ref'" in text


# ----------------------------------------------------------------------------- specs
def spec_dict(dataset, **changes):
    spec = {
        "name": "t-sweep",
        "base": {"preset": "tiny", "dataset": dataset, "max_steps": 6, "eval_every": 3, "checkpoint_every": 3, "log_every": 1},
        "seeds": [1, 2],
        "variants": {"schedule": {}, "fixed": {"current_context_window": 16}},
    }
    spec.update(changes)
    return spec


@pytest.mark.parametrize(
    "change, message",
    [
        ({"variants": {"a": {}, "b": {"n_expertz": 3}}}, "variant 'b'.*unknown field.*n_expertz"),
        ({"base": {"preset": "huge", "max_steps": 5}}, "unknown name 'huge'"),
        ({"variants": {"a": {}, "b": {"seed": 3}}}, "variant 'b' sets seed"),
        ({"base": {"preset": "tiny", "max_steps": 5, "seed": 3}}, "base sets seed"),
        ({"variants": {}}, "at least one named variant"),
        ({"variants": [{"a": {}}, {"a": {"lr": 0.1}}]}, "duplicate name"),
        ({"variants": {"Big model": {}, "big-model": {}}}, "same run name"),
        ({"budget": {"epochs": 3}}, "unknown kind 'epochs'"),
        ({"base": {"preset": "tiny"}, "budget": None}, "no budget"),
        ({"budget": {"steps": 4}}, "steps is given twice"),
        ({"seeds": [1, 1]}, "each seed once"),
        ({"seeds": "one"}, "list of integers"),
        ({"name": "../escape"}, "folder-safe name"),
        ({"variants": {"a": {"top_k": 9}}}, "top_k"),
        ({"colour": "red"}, "unknown key"),
    ],
)
def test_bad_specs_are_refused_before_any_training(toy_dataset, change, message):
    before = set(os.listdir(reports_dir()))
    with pytest.raises(SweepSpecError if "unknown name" not in message else ValueError, match=message):
        run_sweep(spec_dict(toy_dataset, **change))
    assert set(os.listdir(reports_dir())) == before


def test_spec_files_yaml_errors_and_builtin_studies(toy_dataset, tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text("name: d\nbase: {preset: tiny, max_steps: 3}\nseeds: [1]\nvariants:\n  a: {}\n  a: {lr: 0.1}\n")
    with pytest.raises(SweepSpecError, match="duplicate key.*a"):
        load_spec(dup)
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(SweepSpecError, match="not a readable YAML"):
        load_spec(broken)
    prose = tmp_path / "notes.yaml"
    prose.write_text("just a sentence, not a spec")
    with pytest.raises(SweepSpecError, match="not a sweep spec"):
        load_spec(prose)
    binary = tmp_path / "weights.yaml"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(SweepSpecError, match="not a readable YAML"):
        load_spec(binary)
    with pytest.raises(SweepSpecError, match="built-in studies: .*window-schedule"):
        load_spec("no-such-study")
    with pytest.raises(SweepSpecError, match="no prepared dataset"):
        load_spec(spec_dict("never-prepared"))
    assert {"window-schedule", "moe-vs-dense", "tiny"} <= set(builtin_studies())
    for name in builtin_studies():  # every shipped study parses and builds its configs
        spec = load_spec(name, check_dataset=False)
        assert spec.name == name and len(spec.seeds) >= 2 and len(spec.variants) >= 2
    study = load_spec("window-schedule", check_dataset=False)
    assert study.base["max_tokens"] == 2_000_000 and study.base["max_minutes"] is None  # the preset's 10 min removed
    assert study.configs("fixed", 1)[1].current_context_window == 64


# ----------------------------------------------------------------------------- running
def test_sweep_trains_seed_major_summarizes_and_never_retrains(toy_dataset):
    spec = spec_dict(toy_dataset, name="t-run", variants={"schedule": {}, "fixed": {"current_context_window": 16}, "control": {}})
    result = run_sweep(spec, progress=False)
    assert result.trained == [f"t-run-{v}-s{s}" for s in (1, 2) for v in ("schedule", "fixed", "control")]
    folder = sweep_dir("t-run")
    results = pd.read_csv(folder / "results.csv")
    assert list(results.columns[:8]) == ["variant", "seed", "run", "val_bpb", "steps", "tokens", "wall_s", "tokens_per_s"]
    assert len(results) == 6 and (results["steps"] == 6).all()
    summary = pd.read_csv(folder / "summary.csv").set_index("variant")
    assert summary.loc["control", "verdict"] == "no detectable difference" and summary.loc["control", "diff"] == 0
    assert summary.loc["schedule", "verdict"] == "reference" and summary.loc["fixed", "n_paired"] == 2
    # the summary is recomputable from the results with scipy
    fixed = results[results["variant"] == "fixed"].set_index("seed")["val_bpb"]
    ref = results[results["variant"] == "schedule"].set_index("seed")["val_bpb"]
    ci = scipy_stats.ttest_rel(fixed, ref.loc[fixed.index]).confidence_interval()
    assert summary.loc["fixed", ["diff_ci_low", "diff_ci_high"]].tolist() == pytest.approx([ci.low, ci.high])
    assert (folder / "figures" / "summary.png").is_file() and (folder / "figures" / "curves.png").is_file()
    assert set(pd.read_csv(folder / "curves.csv")["variant"]) == {"schedule", "fixed", "control"}
    assert (results["maxvio"] >= 0).all()  # the imbalance at the end, from the metric rows
    readme = (folder / "README.md").read_text()
    assert "## Summary" in readme and "'control'" in readme and "no detectable difference" in readme
    assert "6 runs on" in readme and "![summary](figures/summary.png)" in readme
    # again: nothing to train, the same tables
    again = run_sweep(spec, progress=False)
    assert again.trained == [] and again.results["val_bpb"].tolist() == result.results["val_bpb"].tolist()
    # one more seed trains only that seed's runs
    more = run_sweep({**spec, "seeds": [1, 2, 3]}, progress=False, figures=False)
    assert more.trained == [f"t-run-{v}-s3" for v in ("schedule", "fixed", "control")]
    assert json.loads((run_reports_dir("t-run-fixed-s3") / "config.json").read_text())["train"]["seed"] == 3
    # a sweep resumed on another machine says how many runs each machine trained
    config_path = run_reports_dir("t-run-fixed-s3") / "config.json"
    recorded = json.loads(config_path.read_text())
    here = f"{recorded['hardware']['cpu']} ({recorded['hardware']['threads']} threads)"
    config_path.write_text(json.dumps({**recorded, "hardware": {"cpu": "Other CPU", "threads": 4, "gpu": None}}))
    readme = write_readme(collect(load_spec({**spec, "seeds": [1, 2, 3]}))).read_text()
    assert f"9 runs: 8 on {here}, 1 on Other CPU (4 threads); torch" in readme
    # a variant without a router (a dense model) has no MaxVio: left out of that comparison, not "no difference"
    result = collect(load_spec({**spec, "seeds": [1, 2, 3]}))
    result.results.loc[result.results["variant"] == "control", "maxvio"] = float("nan")
    balance = write_readme(result).read_text().split("MaxVio at the end (mean over layers")[1].split("##")[0]
    assert "| fixed" in balance and "control" not in balance


def test_a_saved_spec_trains_the_same_configs_after_a_preset_changes(toy_dataset, monkeypatch):
    spec = spec_dict(toy_dataset, name="t-saved", seeds=[1], variants={"a": {}, "wide": {"n_embd": 48}})
    run_sweep(spec, progress=False, figures=False)
    saved = sweep_dir("t-saved") / "spec.yaml"
    assert saved.read_text().startswith("# Sweep t-saved, resolved at moelab")
    recorded = {v: json.loads((run_reports_dir(f"t-saved-{v}-s1") / "config.json").read_text()) for v in ("a", "wide")}
    # the tiny preset changes its learning rate and its model's width
    changed = {**PRESETS["tiny"], "model": {**PRESETS["tiny"]["model"], "n_embd": 64},
               "train": {**PRESETS["tiny"]["train"], "lr": 0.01}}
    monkeypatch.setitem(PRESETS, "tiny", changed)
    assert load_spec(spec_dict(toy_dataset)).configs("schedule", 1)[1].lr == 0.01  # an unresolved spec follows the preset
    again = load_spec(saved)
    for variant in ("a", "wide"):
        model, train = again.configs(variant, 1)
        assert model.to_dict() == recorded[variant]["model"] and train.to_dict() == recorded[variant]["train"]
    # so re-running the saved spec finds its runs finished and trains nothing
    assert plan(again)["state"].tolist() == ["finished", "finished"]
    assert run_sweep(saved, progress=False, figures=False).trained == []


@pytest.mark.parametrize("study", sorted(p.name for p in REFERENCE_EXPERIMENTS.iterdir() if p.is_dir()))
def test_a_builtin_study_trains_what_its_reference_results_measured(study):
    """A built-in study with committed results pins the recipe those results measured, so a
    preset change that would alter it fails here (pin the changed fields in the study file)."""
    builtin, reference = load_spec(study, check_dataset=False), load_spec(REFERENCE_EXPERIMENTS / study / "spec.yaml", check_dataset=False)
    assert list(builtin.variants) == list(reference.variants) and builtin.seeds == reference.seeds
    for variant in builtin.variants:
        assert builtin.dataset_of(variant) == reference.dataset_of(variant)
        assert builtin.configs(variant, 1) == reference.configs(variant, 1), variant


def test_resolved_spec_lists_every_field_once_and_only_differences_per_variant():
    spec = load_spec("design-tokenizer", check_dataset=False)
    resolved = spec.resolved()
    field_names = {f.name for cls in (ModelConfig, TrainConfig) for f in dataclasses.fields(cls)} - {"seed"}
    assert set(resolved["base"]) == field_names | {"preset", "dataset"}
    assert resolved["variants"] == {"bytes": {}, "bpe-512": {"vocab_size": 512, "dataset": "machado-bpe512"},
                                    "bpe-2048": {"vocab_size": 2048, "dataset": "machado-bpe2048"}}
    again = load_spec(resolved, check_dataset=False)  # the same runs with the same configs
    assert [again.run_name(v, s) for v in again.variants for s in again.seeds] == [spec.run_name(v, s) for v in spec.variants for s in spec.seeds]
    assert all(again.configs(v, 2) == spec.configs(v, 2) and again.dataset_of(v) == spec.dataset_of(v) for v in spec.variants)


def test_a_killed_sweep_resumes_its_run_from_the_checkpoint_exactly(toy_dataset):
    spec = load_spec(spec_dict(toy_dataset, name="t-kill", seeds=[5], variants={"a": {}, "same": {}}))
    model, train = spec.configs("a", 5)
    Trainer(model, train, spec.run_name("a", 5), dataset=toy_dataset, progress=False).fit(stop_after_steps=3)
    assert plan(spec)["state"].tolist() == ["resume", "new"]
    result = run_sweep(spec, progress=False, figures=False)
    assert result.trained == ["t-kill-a-s5", "t-kill-same-s5"]
    metrics = pd.read_parquet(run_reports_dir("t-kill-a-s5") / "metrics.parquet")
    assert metrics["step"].tolist() == list(range(1, 7))  # steps 4-6 continued, none repeated
    # the resumed run ends exactly where the uninterrupted run of the same configs ends
    a, same = result.results.set_index("variant")["val_bpb"][["a", "same"]]
    assert a == same


def test_an_edited_spec_is_refused_unless_overwritten_and_cli(toy_dataset, capsys):
    spec = spec_dict(toy_dataset, name="t-edit", seeds=[1], variants={"a": {}})
    run_sweep(spec, progress=False, figures=False)
    edited = {**spec, "variants": {"a": {"lr": 0.01}}}
    with pytest.raises(SweepError, match=r"t-edit-a-s1 \(lr 0.003 -> 0.01\).*overwrite"):
        run_sweep(edited, progress=False)
    redone = run_sweep(edited, progress=False, figures=False, overwrite=True)
    assert redone.trained == ["t-edit-a-s1"]
    assert collect(load_spec(edited)).results["run"].tolist() == ["t-edit-a-s1"]
    # the command line: a plan, and a clear error with exit status 2
    assert main([str(_write(spec_dict(toy_dataset, name="t-edit", seeds=[1], variants={"a": {"lr": 0.01}}))), "--plan"]) == 0
    assert "finished" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        main([str(_write(spec_dict(toy_dataset, variants={"a": {"seed": 2}})))])
    assert stop.value.code == 2 and "sets seed" in capsys.readouterr().err


def test_a_second_process_on_the_same_sweep_is_refused(toy_dataset):
    spec = spec_dict(toy_dataset, name="t-lock", seeds=[1], variants={"a": {}})
    folder = sweep_dir("t-lock")
    folder.mkdir(parents=True)
    import socket

    (folder / "lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    with pytest.raises(SweepError, match="already running"):
        run_sweep(spec, progress=False)
    (folder / "lock").write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname()}))  # a dead process
    assert run_sweep(spec, progress=False, figures=False).trained == ["t-lock-a-s1"]
    assert not (folder / "lock").exists()


def test_variants_on_other_tokenizers_train_on_their_datasets_and_are_scored_on_the_same_bytes(toy_dataset, bpe_dataset, tmp_path, capsys):
    from moelab.data import CorpusError, load_dataset
    from moelab.runs.checkpoint import load_model
    from moelab.runs.files import latest_checkpoint
    from moelab.evaluate.scoring import score_bytes
    from moelab.sweep.runner import score_runs

    variants = {"bytes": {}, "bpe": {"dataset": "toy-bpe", "vocab_size": 300}}
    with pytest.raises(SweepSpecError, match=r"variant 'bpe'.*bpe tokenizer \(300 tokens\).*vocab_size=300"):
        load_spec(spec_dict(toy_dataset, name="t-tok", variants={"bytes": {}, "bpe": {"dataset": "toy-bpe", "vocab_size": 256}}))
    unset = load_spec(spec_dict(toy_dataset, name="t-tok", variants={"bytes": {}, "bpe": {"dataset": "toy-bpe"}}))
    assert [unset.configs(v, 1)[0].vocab_size for v in ("bytes", "bpe")] == [256, load_dataset("toy-bpe").meta["vocab_size"]]
    with pytest.raises(SweepSpecError, match=r"variant 'bpe'.*no prepared dataset.*"
                       r'prepare_dataset\(<its source>, dataset="toy-bpe512", tokenizer="bpe", vocab_size=512\)'):
        load_spec(spec_dict(toy_dataset, name="t-tok", variants={"bpe": {"dataset": "toy-bpe512", "vocab_size": 512}}))
    with pytest.raises(CorpusError, match=r'prepare_dataset\("machado", tokenizer="bpe", vocab_size=999\)'):
        load_dataset("machado-bpe999")
    spec = spec_dict(toy_dataset, name="t-tok", seeds=[1, 2], variants=variants)
    run_sweep(spec, progress=False, figures=False)
    assert json.loads((run_reports_dir("t-tok-bpe-s1") / "config.json").read_text())["dataset"] == "toy-bpe"
    assert plan(load_spec(spec))["state"].tolist() == ["finished"] * 4
    text = tmp_path / "text.txt"
    text.write_text("Capitu tinha olhos de ressaca. Ao vencedor, as batatas! — Continue, disse eu.\n" * 4, encoding="utf-8")
    table, summary = score_runs(spec, text, progress=False)
    table = table.set_index("run")
    assert (table["bytes"] == len(text.read_bytes())).all()  # every tokenizer, the same bytes
    assert (table.loc[table["variant"] == "bpe", "tokens"] < 0.8 * len(text.read_bytes())).all()
    for run, row in table.iterrows():  # reference: the model and its dataset's tokenizer, outside the sweep
        dataset = variants[row["variant"]].get("dataset", toy_dataset)
        model = load_model(latest_checkpoint(run))
        expected = score_bytes(model, text.read_bytes(), tokenizer=load_dataset(dataset).tokenizer).bits_per_byte
        assert row["bpb"] == pytest.approx(expected, rel=1e-6)
    written = pd.read_csv(sweep_dir("t-tok") / f"score-{tmp_path.name}-text.txt-summary.csv").set_index("variant")
    assert written["mean"].tolist() == pytest.approx(summary["mean"].tolist())
    assert written.loc["bpe", "mean"] == pytest.approx(table.loc[table["variant"] == "bpe", "bpb"].mean())
    assert written.loc["bpe", "n_paired"] == 2 and written.loc["bytes", "verdict"] == "reference"
    assert f"## Scored on `{text}`" in (sweep_dir("t-tok") / "README.md").read_text()
    from moelab.paths import data_dir

    with pytest.raises(SweepError, match="token ids of another tokenizer, not text"):
        score_runs(spec, data_dir() / "processed" / "toy-bpe" / "val.bin", progress=False)
    assert main([str(_write(spec)), "--score", str(text), "--no-progress"]) == 0
    assert "written:" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        main([str(_write(spec)), "--score", str(tmp_path / "missing.txt")])
    assert stop.value.code == 2 and "not a file to score" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main([str(_write(spec)), "--stride", "4"])
    assert stop.value.code == 2 and "--stride goes with --score" in capsys.readouterr().err


def _write(spec: dict):
    import tempfile

    import yaml

    path = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    yaml.safe_dump(spec, path)
    path.close()
    return path.name
