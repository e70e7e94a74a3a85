"""benchmarks/lr_sweep.py's choice: one lr for all rows, the lowest mean of the rows' best validation NLL."""

from benchmarks.lr_sweep import choose


def _run(row, lr, curve, steps=(8, 16, 24, 32)):
    best = min(range(len(curve)), key=curve.__getitem__)
    return {"row": row, "lr": lr, "steps": list(steps), "val_nll": list(curve), "best_step": steps[best], "best_val_nll": curve[best]}


def test_one_lr_for_all_rows_even_where_their_best_lrs_differ():
    results = [_run("a", 2e-4, [3.0, 2.9, 2.8, 2.7]), _run("a", 5e-4, [3.0, 2.6, 2.65, 2.7]), _run("a", 1e-3, [2.55, 2.8, 2.9, 3.0]),
               _run("b", 2e-4, [3.4, 3.3, 2.9, 2.7]), _run("b", 5e-4, [3.1, 2.5, 2.5, 2.6]), _run("b", 1e-3, [2.6, 2.6, 2.7, 2.9])]
    c = choose(results, ["a", "b"])
    assert {row: b["lr"] for row, b in c["best"].items()} == {"a": 1e-3, "b": 5e-4} and not c["agree"]
    assert c["mean_best"][5e-4] == (2.6 + 2.5) / 2 and c["chosen"] == 5e-4
    assert c["unresolved"] == [("a", 1e-3), ("b", 1e-3)]  # best at the first validation step
    assert c["unresolved_late"] == [("a", 2e-4), ("b", 2e-4)]  # best at the last: the minimum may lie later


def test_step_0_is_the_untrained_model_not_the_first_validation_step():
    steps = (0, 8, 16, 24, 32)
    c = choose([_run("a", 1e-3, [3.5, 2.5, 2.8, 2.9, 3.0], steps), _run("a", 5e-4, [3.5, 3.0, 2.9, 2.8, 2.7], steps)], ["a"])
    assert c["chosen"] == 1e-3 and c["unresolved"] == [("a", 1e-3)] and c["unresolved_late"] == [("a", 5e-4)]


def test_an_lr_not_run_for_every_row_is_not_chosen():
    results = [_run("a", 1e-4, [2.0, 1.9, 1.8, 1.7]), _run("a", 2e-4, [3.0, 2.9, 2.8, 2.75]), _run("b", 2e-4, [3.0, 2.9, 2.8, 2.7])]
    c = choose(results, ["a", "b"])
    assert set(c["mean_best"]) == {2e-4} and c["chosen"] == 2e-4 and c["unresolved"] == []
