import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qlora.train import Schedule, TrainConfig, train
from qlora.train.batching import collate, epoch_order
from qlora.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from qlora.train.schedule import lr_multiplier
from tests.train.tiny import tiny_examples, tiny_llama

ROOT = Path(__file__).resolve().parents[2]


def adapter(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_loss_goes_down_on_a_fixed_batch():
    model = tiny_llama(trainable=("proj", "lm_head", "embed"))
    examples = tiny_examples(4)
    result = train(model, examples, TrainConfig(max_steps=30, micro_batch_size=4, lr=3e-2, max_grad_norm=1.0), progress=False)
    assert result.losses[-1] < 0.5 * result.losses[0]


def test_only_trainable_parameters_change():
    model = tiny_llama()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = adapter(model)
    train(model, tiny_examples(8), TrainConfig(max_steps=3, lr=1e-2), progress=False)
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert not torch.equal(p, before[n])
        else:
            assert torch.equal(p, frozen[n])


def test_gradient_accumulation_matches_a_larger_batch():
    # equal-length examples so that the mean over micro-batch means equals the mean over the batch
    examples = [{"input_ids": e["input_ids"][:6], "labels": e["input_ids"][:6]} for e in tiny_examples(8)]
    common = dict(max_steps=2, lr=1e-2, group_by_length=False, max_grad_norm=0.0, warmup_ratio=0.0)
    a, b = tiny_llama(), tiny_llama()
    a.model.layers[0].self_attn.q_proj.weight.requires_grad = True
    a.eval(), b.eval()
    for m in (a, b):
        m.config.attention_dropout = 0.0
        for layer in m.model.layers:
            layer.self_attn.attention_dropout = 0.0
    ra = train(a, examples, TrainConfig(micro_batch_size=4, grad_accum=1, **common), progress=False)
    rb = train(b, examples, TrainConfig(micro_batch_size=2, grad_accum=2, **common), progress=False)
    assert ra.losses == pytest.approx(rb.losses, rel=1e-5)
    for (n, pa), pb in zip(adapter(a).items(), adapter(b).values()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=n)


def test_schedules():
    assert [lr_multiplier(s, 100, 3, Schedule.CONSTANT) for s in (0, 1, 2, 3, 99)] == [1 / 3, 2 / 3, 1, 1, 1]
    assert lr_multiplier(3, 100, 3, Schedule.COSINE) == 1.0
    assert lr_multiplier(99, 100, 3, Schedule.COSINE) == pytest.approx(0.5 * (1 + math.cos(math.pi * 96 / 97)))
    assert TrainConfig(max_steps=100, warmup_ratio=0.03).warmup_steps == 3


def test_grad_norm_is_clipped_to_the_paper_value():
    seen = []
    model = tiny_llama()
    train(model, tiny_examples(8), TrainConfig(max_steps=2, lr=1.0, max_grad_norm=0.3), progress=False,
          on_step=seen.append)  # fmt: skip
    assert all(m.grad_norm > 0 for m in seen)  # the norm before clipping is reported


def test_group_by_length_batches_similar_lengths():
    lengths = [3, 50, 4, 49, 5, 48, 6, 47]
    order = epoch_order(lengths, micro_batch_size=2, seed=0, epoch=0, group_by_length=True)
    spans = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in order]
    assert max(spans) <= 2
    assert sorted(i for b in order for i in b) == list(range(8))
    assert order == epoch_order(lengths, 2, 0, 0, True)  # deterministic
    assert order != epoch_order(lengths, 2, 0, 1, False)


def test_collate_pads_and_masks():
    batch = collate([{"input_ids": torch.tensor([5, 6, 7]), "labels": torch.tensor([-100, 6, 7])},
                     {"input_ids": torch.tensor([8]), "labels": torch.tensor([8])}], pad_token_id=0)  # fmt: skip
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    cls = collate([{"input_ids": torch.tensor([1, 2]), "label": torch.tensor(2)}], pad_token_id=0)
    assert cls["labels"].tolist() == [2]


def test_memory_report_accounts_adapters_and_optimizer_state():
    seen = []
    model = tiny_llama()
    train(model, tiny_examples(8), TrainConfig(max_steps=1), progress=False, on_step=seen.append)
    mem = seen[0].memory
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert mem.adapters == 4 * n_trainable
    assert mem.optimizer_state >= 2 * 4 * n_trainable  # AdamW: two fp32 moments (+ step counters)
    assert mem.peak > mem.weights + mem.adapters


def test_bad_config_raises():
    with pytest.raises(ValueError, match=r"micro_batch_size=0: expected an integer >= 1"):
        TrainConfig(micro_batch_size=0)
    with pytest.raises(ValueError, match=r"lr=-1.0: expected a finite number > 0$"):
        TrainConfig(lr=-1.0)
    with pytest.raises(ValueError, match=r"schedule=.linear.: expected one of CONSTANT, COSINE"):
        TrainConfig(schedule="linear")
    with pytest.raises(ValueError, match="no trainable parameters"):
        model = tiny_llama(trainable=())
        train(model, tiny_examples(4), TrainConfig(max_steps=1), progress=False)


def test_checkpoint_round_trip_and_atomic_failure(tmp_path, monkeypatch):
    state = {"step": 3, "a": {1: torch.arange(4), "x": [torch.ones(2), (1, "s")]}, "none": None}
    save_checkpoint(tmp_path, 3, state)
    back = load_checkpoint(latest_checkpoint(tmp_path))
    assert back["step"] == 3 and torch.equal(back["a"][1], torch.arange(4)) and back["a"]["x"][1] == (1, "s")

    import qlora.train.checkpoint as ck

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_file", boom)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, 4, state)
    assert latest_checkpoint(tmp_path).name == "step-00000003"  # still the complete one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000003"]  # no debris


def test_resume_in_process_equals_uninterrupted(tmp_path):
    config = TrainConfig(max_steps=6, micro_batch_size=4, grad_accum=2, lr=1e-2, save_every=1)
    full = tiny_llama()
    reference = train(full, tiny_examples(), config, progress=False)

    class Crash(Exception):
        pass

    def crash_after_3(m):
        if m.step == 3:
            raise Crash

    with pytest.raises(Crash):
        train(tiny_llama(), tiny_examples(), config, checkpoint_dir=tmp_path, progress=False, on_step=crash_after_3)
    assert latest_checkpoint(tmp_path).name == "step-00000002"  # step 3 crashed before its checkpoint
    resumed_model = tiny_llama()
    with torch.no_grad():  # wipe the adapter: it must come back from the checkpoint
        for p in resumed_model.parameters():
            if p.requires_grad:
                p.zero_()
    resumed = train(resumed_model, tiny_examples(), config, checkpoint_dir=tmp_path, progress=False)
    assert resumed.resumed_from == 2 and [m.step for m in resumed.history] == [3, 4, 5, 6]
    assert resumed.losses == reference.losses
    for n, p in adapter(full).items():
        assert torch.equal(p, adapter(resumed_model)[n]), n
    with pytest.raises(ValueError, match="other settings"):
        train(tiny_llama(), tiny_examples(), TrainConfig(**{**config.__dict__, "lr": 2e-2}), checkpoint_dir=tmp_path, progress=False)


@pytest.mark.slow
def test_sigkill_at_any_step_then_restart_gives_the_same_adapter(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = [sys.executable, str(ROOT / "tests" / "train" / "tiny.py")]
    steps = 8
    subprocess.run(script + [str(tmp_path / "ref"), str(tmp_path / "ref.safetensors"), str(steps)], env=env, check=True,
                   capture_output=True)  # fmt: skip

    ckpt = tmp_path / "ckpt"
    proc = subprocess.Popen(script + [str(ckpt), str(tmp_path / "out.safetensors"), str(steps)], env=env,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    for line in proc.stdout:
        if line.strip() == "step 4":
            proc.send_signal(signal.SIGKILL)  # possibly in the middle of writing checkpoint 4
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "out.safetensors").exists()
    resumed_from = latest_checkpoint(ckpt).name
    done = subprocess.run(script + [str(ckpt), str(tmp_path / "out.safetensors"), str(steps)], env=env, check=True,
                          capture_output=True, text=True)  # fmt: skip
    first_step = int(done.stdout.split()[1])
    assert first_step in (4, 5), (resumed_from, done.stdout)  # resumed after step 3 or 4, not from scratch
    ref, out = load_file(tmp_path / "ref.safetensors"), load_file(tmp_path / "out.safetensors")
    assert ref.keys() == out.keys()
    for name in ref:
        assert torch.equal(ref[name], out[name]), name


def test_default_optimizer_is_paged_adamw_with_8bit_option():
    from qlora.optim import PagedAdamW, StateBits

    seen = []
    model = tiny_llama(trainable=("proj",))
    config = TrainConfig(max_steps=2, optimizer_bits=StateBits.BITS_8, lr=1e-3)
    train(model, tiny_examples(8), config, progress=False, on_step=seen.append)
    n_big = sum(p.numel() for p in model.parameters() if p.requires_grad and p.numel() >= 4096)
    n_small = sum(p.numel() for p in model.parameters() if p.requires_grad and p.numel() < 4096)
    # 8-bit moments for tensors >= 4096 elements (~2 bytes/param), 32-bit below (8 bytes/param)
    assert seen[-1].memory.optimizer_state < 2.2 * n_big + 8.5 * n_small
    assert isinstance(__import__("qlora.train.trainer", fromlist=["x"]).default_optimizer([torch.nn.Parameter(torch.ones(2))], config), PagedAdamW)


def test_a_finished_run_extended_to_more_steps_resumes_from_its_last_checkpoint(tmp_path):
    common = dict(micro_batch_size=4, grad_accum=1, lr=1e-2, warmup_ratio=0.0, save_every=2)
    reference = tiny_llama()
    full = train(reference, tiny_examples(8), TrainConfig(max_steps=5, **common), progress=False)
    train(tiny_llama(), tiny_examples(8), TrainConfig(max_steps=3, **common), checkpoint_dir=tmp_path, progress=False)
    model = tiny_llama()
    extended = train(model, tiny_examples(8), TrainConfig(max_steps=5, **common), checkpoint_dir=tmp_path, progress=False)
    assert extended.resumed_from == 3 and [m.step for m in extended.history] == [4, 5]
    assert extended.losses == full.losses
    for n, p in adapter(reference).items():
        assert torch.equal(p, adapter(model)[n]), n


@pytest.mark.parametrize("change, needle", [
    (dict(schedule=Schedule.COSINE), "the COSINE schedule depends on max_steps"),
    (dict(warmup_ratio=0.25), r"the warmup \(1 -> 2 steps\) depends on max_steps"),
])  # fmt: skip
def test_extending_a_run_whose_learning_rates_depend_on_max_steps_is_refused(tmp_path, change, needle):
    common = {**dict(micro_batch_size=4, lr=1e-2, warmup_ratio=0.0), **change}
    train(tiny_llama(), tiny_examples(8), TrainConfig(max_steps=5, **common), checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=rf"max_steps=5; this run asks for 8, but {needle}"):
        train(tiny_llama(), tiny_examples(8), TrainConfig(max_steps=8, **common), checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="at step 5, past max_steps=3"):
        train(tiny_llama(), tiny_examples(8), TrainConfig(max_steps=3, **common), checkpoint_dir=tmp_path, progress=False)


def test_a_settings_mismatch_names_only_the_keys_that_differ(tmp_path):
    config = TrainConfig(max_steps=2, micro_batch_size=4, lr=1e-2)
    train(tiny_llama(), tiny_examples(8), config, checkpoint_dir=tmp_path, progress=False)
    other = TrainConfig(**{**config.__dict__, "lr": 2e-2, "seed": 5, "save_every": 1, "nproc_per_node": 2})
    with pytest.raises(ValueError) as caught:
        train(tiny_llama(), tiny_examples(8), other, checkpoint_dir=tmp_path, progress=False)
    message = str(caught.value)
    assert "lr: 0.01 in the checkpoint, 0.02 now; seed: 0 in the checkpoint, 5 now" in message
    assert "micro_batch_size" not in message and "save_every" not in message and "nproc_per_node" not in message
