"""The report's figures: one loss plot for every data type (DVC), the chance line on MMLU, memory by model, the
perplexity ratio to BF16 per model."""

import json
from pathlib import Path

import pytest

from qlora.config import Method
from qlora.eval.result import Score
from qlora.report import plots, ratio_plot
from qlora.report.records import EvalRecord, TrainRecord

ROOT = Path(__file__).resolve().parents[2]


def _train(model, quant, method=Method.QLORA, losses=(2.0, 1.5)):
    return TrainRecord(model, quant, method, 4.127, 100.0, 10.0, 500.0, "cpu_peak_rss", len(losses), 900.0, losses)


@pytest.fixture
def figures(monkeypatch):
    """The matplotlib figures the plot functions make (not saved)."""
    made = []
    for module in (plots, ratio_plot):
        monkeypatch.setattr(module, "_save", lambda fig, path: made.append(fig) or Path(path))
    return made


def test_loss_curves_csv_is_one_long_table_with_the_data_type():
    text = plots.loss_curves_csv([_train("m", "nf4_dq"), _train("m", "bf16", Method.LORA, (3.0,))])
    assert text == "step,loss,data_type\n1,2.0,qlora nf4_dq\n2,1.5,qlora nf4_dq\n1,3.0,lora bf16\n"


def test_dvc_plots_loss_by_data_type_with_a_template_that_colours_by_it():
    import yaml

    report = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["report"]
    (entry,) = [p["reports/loss_by_data_type.csv"] for p in report["plots"] if "reports/loss_by_data_type.csv" in p]
    assert entry["template"] == "by_data_type" and (entry["x"], entry["y"]) == ("step", "loss")
    template = json.loads((ROOT / ".dvc" / "plots" / "by_data_type.json").read_text())
    assert template["encoding"]["color"]["field"] == "data_type" and template["data"]["values"] == "<DVC_METRIC_DATA>"


def test_mmlu_shows_the_chance_line(figures):
    evals = [EvalRecord("m", "nf4_dq", Method.QLORA, "MMLU", Score("mmlu", "accuracy", 0.3, 100, 0.2, 0.4))]
    plots.accuracy_bars(evals, "mmlu", "x.png")
    lines = [line for line in figures[0].axes[0].lines if line.get_label().startswith("chance")]
    assert len(lines) == 1 and list(lines[0].get_ydata()) == [25.0, 25.0]
    plots.accuracy_bars([EvalRecord("e", "bf16", Method.LORA, "t", Score("classification", "accuracy", 0.5, 10, 0.3, 0.7))],
                        "classification", "y.png")
    assert not [line for line in figures[1].axes[0].lines if line.get_label().startswith("chance")]


def test_memory_groups_by_model_and_says_what_it_shows(figures):
    plots.memory_bars([_train("llama", "nf4_dq"), _train("bert", "fp4"), _train("llama", "bf16", Method.LORA)], "m.png")
    fig = figures[0]
    assert [ax.get_title() for ax in fig.axes] == ["bert", "llama"]
    assert [t.get_text() for t in fig.axes[1].get_xticklabels()] == ["qlora\nNF4 + DQ", "lora\nBF16"]
    assert fig._suptitle.get_text().startswith("Stored weights and adapters by data type, per model")


def test_validation_gaps_per_seed(tmp_path):
    from qlora.config import Method
    from qlora.report.plots import gap_vs_step, validation_gaps, validation_gaps_csv
    from qlora.report.records import TrainRecord

    def rec(method, quant, seed, nll):
        return TrainRecord("m", quant, method, 4.0, 1.0, 1.0, 1.0, "cpu_peak_rss", 6, 1.0, (1.0,) * 6, seed=seed,
                           val_steps=(2, 4, 6), val_nll=nll, chosen_step=2)  # fmt: skip

    trains = [rec(Method.LORA, "bf16", 0, (2.0, 1.8, 1.7)), rec(Method.QLORA, "nf4_dq", 0, (2.2, 1.9, 1.75)),
              rec(Method.QLORA, "fp4", 0, (2.1, 1.95, 1.9)), rec(Method.LORA, "bf16", 1, (2.0, 1.8, 1.7))]  # no NF4+DQ seed 1
    rows = validation_gaps(trains)
    c = [(s, round(g, 6)) for pair, _, seed, s, g in rows if pair.startswith("(c)")]
    d = [(s, round(g, 6)) for pair, _, seed, s, g in rows if pair.startswith("(d)")]
    assert c == [(2, 0.2), (4, 0.1), (6, 0.05)] and d == [(2, 0.1), (4, -0.05), (6, -0.15)]
    assert validation_gaps_csv(trains).splitlines()[1] == "(c) QLoRA NF4 + DQ - LoRA BF16,m,0,2,0.20000000000000018"
    assert gap_vs_step(trains, tmp_path / "g.png").stat().st_size > 1000
    assert gap_vs_step([], tmp_path / "empty.png").exists()  # no validation: a figure saying so


def _table2_data():
    import pandas as pd

    nan = float("nan")
    rows = [  # Table 2's CSV frame: BF16 has no ratio to itself; an MMLU row has none to plot
        ("m1", "bf16", "perplexity", nan, nan, nan), ("m1", "nf4_dq", "perplexity", 1.05, 1.02, 1.09),
        ("m1", "nf4_dq", "mmlu_0shot", -0.01, -0.03, 0.01), ("m0", "fp4", "perplexity", 1.20, 1.10, 1.31),
        ("m0", "nf4_dq_e4m4", "perplexity", 0.99, 0.97, 1.01),
    ]  # fmt: skip
    return pd.DataFrame([{"model": m, "quant": q, "task": t, "vs_bf16_estimate": e, "vs_bf16_ci_low": lo, "vs_bf16_ci_high": hi}
                         for m, q, t, e, lo, hi in rows])  # fmt: skip


def test_perplexity_ratios_come_from_table2_in_its_order_without_bf16_or_mmlu():
    assert ratio_plot.perplexity_ratios(_table2_data()) == {
        "m1": [("NF4 + DQ", 1.05, 1.02, 1.09)],
        "m0": [("FP4 (E2M1, bnb grid)", 1.20, 1.10, 1.31), ("NF4 + DQ (E4M4)", 0.99, 0.97, 1.01)],
    }


def test_perplexity_ratio_plot_has_a_panel_per_model_with_the_paired_intervals(figures):
    ratio_plot.perplexity_ratio_to_bf16(_table2_data(), "r.png")
    fig = figures[0]
    assert [ax.get_title() for ax in fig.axes] == ["m0", "m1"]
    m0 = fig.axes[0]
    assert m0.get_yscale() == "log"
    assert [t.get_text() for t in m0.get_xticklabels()] == ["FP4 (E2M1, bnb grid)", "NF4 + DQ (E4M4)"]
    (points,) = [line for line in m0.lines if line.get_marker() == "o"]
    assert list(points.get_ydata()) == [1.20, 0.99]
    (bars,) = m0.collections  # the error bars: segments from each low to each high
    assert [tuple(seg[:, 1]) for seg in bars.get_segments()] == [pytest.approx((1.10, 1.31)), pytest.approx((0.97, 1.01))]
    assert [list(line.get_ydata()) for line in m0.lines if line.get_linestyle() == "-"] == [[1.0, 1.0]]  # BF16's line


def test_perplexity_ratio_plot_says_so_when_there_are_none(figures):
    import pandas as pd

    ratio_plot.perplexity_ratio_to_bf16(pd.DataFrame([{"model": "m", "quant": "bf16", "task": "perplexity"}]), "r.png")
    assert [t.get_text() for t in figures[0].axes[0].texts] == ["no perplexity ratios"]
