"""FSDP2 training on 2 CPU ranks (gloo) against one process: same loss curve and adapter."""

import pytest
import torch

from qlora.train import TrainConfig, train
from tests.distributed import workers
from tests.distributed.ranks import run_ranks

# fp32 on CPU: the 2-rank run differs from one process only by summation order (losses: rel 1e-5). Adam
# divides each coordinate's step by its gradient's magnitude, so a gradient coordinate near 0 turns a
# rounding difference into a visible step difference: adapters agree to 5e-5 (0.25% of one step of lr 2e-2).
TIGHT = dict(rtol=1e-5, atol=5e-5)
CONFIG = dict(max_steps=4, micro_batch_size=4, grad_accum=2, lr=2e-2, warmup_ratio=0.0, max_grad_norm=0.3, seed=3)


def single_process(config: dict, n_examples: int = 13) -> dict:
    model = workers.tiny_qlora()
    result = train(model, workers.examples(n_examples), TrainConfig(**config), progress=False)
    return {"losses": result.losses, "adapter": {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}}


def test_two_ranks_match_one_process_on_the_same_global_batches():
    # 13 examples in micro-batches of 4: the last one holds 1 example, so rank 1 runs an empty share
    reference = single_process(CONFIG)
    ranks = run_ranks(workers.train_tiny, CONFIG)
    for got in ranks:
        assert got["losses"] == pytest.approx(reference["losses"], rel=1e-5)
        assert got["adapter"].keys() == reference["adapter"].keys()
        for name, value in reference["adapter"].items():
            torch.testing.assert_close(got["adapter"][name], value, **TIGHT, msg=name)
    assert reference["losses"][-1] < reference["losses"][0]  # it trained


@pytest.mark.slow
def test_checkpoints_are_written_once_whole_and_resume_on_another_number_of_ranks(tmp_path):
    uninterrupted = single_process(CONFIG)
    # 2 ranks run steps 1-2 (a finished shorter run: a constant schedule lets it be extended) ...
    run_ranks(workers.train_tiny, {**CONFIG, "max_steps": 2, "save_every": 1}, str(tmp_path / "ckpt"))
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["latest", "step-00000002"]  # one writer, no debris
    # ... one process resumes at step 3 and ends where one process alone ends
    model = workers.tiny_qlora()
    resumed = train(model, workers.examples(13), TrainConfig(**CONFIG), checkpoint_dir=tmp_path / "ckpt", progress=False)
    assert resumed.resumed_from == 2
    assert resumed.losses == pytest.approx(uninterrupted["losses"], rel=1e-5)
    for name, value in uninterrupted["adapter"].items():
        torch.testing.assert_close(dict(model.named_parameters())[name].detach(), value, **TIGHT, msg=name)
    # and a one-process checkpoint resumes on 2 ranks
    single = {**CONFIG, "max_steps": 2, "save_every": 1}
    train(workers.tiny_qlora(), workers.examples(13), TrainConfig(**single), checkpoint_dir=tmp_path / "one", progress=False)
    for got in run_ranks(workers.train_tiny, CONFIG, str(tmp_path / "one")):
        assert got["resumed_from"] == 2 and got["losses"] == pytest.approx(uninterrupted["losses"], rel=1e-5)
        for name, value in uninterrupted["adapter"].items():
            torch.testing.assert_close(got["adapter"][name], value, **TIGHT, msg=name)


def test_progress_and_on_step_on_rank_0_only(tmp_path):
    ranks = run_ranks(workers.train_tiny_logged, {**CONFIG, "max_steps": 2})
    assert [r["steps"] for r in ranks] == [[1, 2], []]


def test_8bit_state_is_chosen_from_the_full_size_and_gathers_without_loss():
    ranks = run_ranks(workers.eight_bit_state)
    for got in ranks:
        assert got["local_numel"] == 2560  # below MIN_8BIT_SIZE, but the parameter has 5120 elements
        assert got["keys"] == ["exp_avg_absmax", "exp_avg_codes", "exp_avg_sq_absmax", "exp_avg_sq_codes", "step"]
        assert got["round_trip_exact"]  # gathered, then cut for the same ranks: bit for bit
    whole = ranks[0]["whole"]
    assert whole["shards"] == 2 and len(whole["state"][0]["exp_avg_codes"]) == 2
    # resumed by one process: dequantized, quantized again in its own blocks (with a warning), close to the ranks' values
    from qlora.distributed import shard_optimizer_state
    from qlora.optim import state8bit

    with pytest.warns(UserWarning, match="quantized again for 1"):
        one = shard_optimizer_state(whole, [torch.nn.Parameter(ranks[0]["param"])])["state"][0]
    pieces = [state8bit.dequantize_moment(c, a, state8bit.MomentMap.SIGNED)
              for c, a in zip(whole["state"][0]["exp_avg_codes"], whole["state"][0]["exp_avg_absmax"])]  # fmt: skip
    again = state8bit.dequantize_moment(one["exp_avg_codes"], one["exp_avg_absmax"], state8bit.MomentMap.SIGNED)
    torch.testing.assert_close(again, torch.cat(pieces), rtol=0.02, atol=1e-4)


def test_a_model_that_is_not_sharded_is_refused_under_several_ranks():
    with pytest.raises(AssertionError, match="the model is not sharded: shard it"):
        run_ranks(workers.train_unsharded)
