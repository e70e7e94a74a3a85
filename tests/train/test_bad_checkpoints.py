"""Resume checkpoints that lie are refused with one clear error; killed writers leave nothing behind.

The folders are written by the trainer itself (a tiny Llama, two steps, a checkpoint per step), then
tampered with as a disk or a user's hands would, then resumed as a user would (`train` with the same
checkpoint folder) or read the way the trainer reads them (`load_checkpoint` + `check_training_state`).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from qlora.train import TrainConfig, train
from qlora.train.checkpoint import (
    LATEST,
    STATE_FILE,
    TENSORS_FILE,
    check_training_state,
    latest_checkpoint,
    load_checkpoint,
    remove_leftovers,
    save_checkpoint,
)
from qlora.train.trainer import trainable_parameters
from tests.train.tiny import tiny_examples, tiny_llama

ROOT = Path(__file__).resolve().parents[2]
CONFIG = TrainConfig(max_steps=3, micro_batch_size=4, grad_accum=1, lr=1e-2, save_every=1)
STEP = "step-00000002"
Q = "model.layers.0.self_attn.q_proj.weight"  # a trained parameter of tiny_llama


class _Stop(Exception):
    pass


def _stop_at_3(metrics):  # on_step runs before the step's checkpoint is written
    if metrics.step == 3:
        raise _Stop


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A run of 3 steps stopped after its checkpoint of step 2 (the next run with CONFIG resumes it)."""
    root = tmp_path_factory.mktemp("resume")
    with pytest.raises(_Stop):
        train(tiny_llama(), tiny_examples(), CONFIG, checkpoint_dir=root / "ckpt", progress=False, on_step=_stop_at_3)
    assert sorted(p.name for p in (root / "ckpt").iterdir()) == [LATEST, STEP]
    return root / "ckpt"


@pytest.fixture
def ckpt(pristine, tmp_path):
    shutil.copytree(pristine, tmp_path / "ckpt")
    return tmp_path / "ckpt"


def tensor_key(folder, *path):
    """The tensors.safetensors key that state.json uses for the value at `path` (dict keys, list indices)."""
    node = json.loads((folder / STATE_FILE).read_text())
    for part in path:
        if "__dict__" in node:
            node = next(v for k, v in node["__dict__"] if k == part)
        else:
            node = next(iter(node.values()))[part]
    return node["__tensor__"]


def edit_tensors(folder, fn):
    state = load_file(folder / TENSORS_FILE)
    fn(state)
    save_file(state, folder / TENSORS_FILE)


def fill(*path, value):
    return lambda d: edit_tensors(d, lambda s: s[tensor_key(d, *path)].view(-1).__setitem__(0, value))


def edit_state_json(fn):
    def inner(d):
        skeleton = json.loads((d / STATE_FILE).read_text())
        fn(skeleton["__dict__"])
        (d / STATE_FILE).write_text(json.dumps(skeleton))

    return inner


def _tensor_refs(node):
    if isinstance(node, dict):
        return [node["__tensor__"]] if "__tensor__" in node else [k for v in node.values() for k in _tensor_refs(v)]
    return [k for v in node for k in _tensor_refs(v)] if isinstance(node, list) else []


def drop_entry(name):
    """Deletes a top-level entry of the state: from state.json and, with it, the tensors it refers to."""

    def inner(d):
        dropped = []
        edit_state_json(lambda entries: dropped.append(entries.pop(next(i for i, e in enumerate(entries) if e[0] == name))))(d)
        edit_tensors(d, lambda s: [s.pop(k) for k in _tensor_refs(dropped[0][1])])

    return inner


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def drop_adapter_entry(d):
    """Deletes one trained parameter from the state (both its state.json entry and its tensor)."""
    key = tensor_key(d, "adapter", Q)

    def inner(entries):
        adapter = next(v for k, v in entries if k == "adapter")["__dict__"]
        adapter.remove(next(e for e in adapter if e[0] == Q))

    edit_state_json(inner)(d)
    edit_tensors(d, lambda s: s.pop(key))


NAN, INF = float("nan"), float("inf")
S, T = STATE_FILE, TENSORS_FILE

# Resumed through train() as a user would: (id, tamper(step folder or checkpoint folder), exception, needles)
RESUME_CASES = [
    ("state-json-truncated", lambda d: truncate(d / S), ValueError, [S, "training state is not valid JSON"]),
    ("state-json-garbage-appended", lambda d: (d / S).write_text((d / S).read_text() + "}x"), ValueError, [S, "not valid JSON"]),
    ("state-json-missing", lambda d: (d / S).unlink(), FileNotFoundError, [S, "not found"]),
    ("state-json-a-list", lambda d: (d / S).write_text("[1]"), ValueError, [S, "must be a JSON object"]),
    ("state-json-untagged", lambda d: (d / S).write_text('{"step": 2}'), ValueError, [S, "expected one of __tensor__"]),
    ("tensors-truncated", lambda d: truncate(d / T), ValueError, [T, "not a readable safetensors file"]),
    ("tensors-garbage-appended", lambda d: (d / T).write_bytes((d / T).read_bytes() + b"xx"), ValueError, [T, "truncated or corrupt"]),
    ("tensors-missing", lambda d: (d / T).unlink(), FileNotFoundError, [T, "not found"]),
    ("adapter-nan", fill("adapter", Q, value=NAN), ValueError, [T, f"(adapter.{Q})", "1 of 1024 values are not finite"]),
    ("adapter-inf", fill("adapter", Q, value=-INF), ValueError, [T, f"(adapter.{Q})", "not finite"]),
    ("optimizer-exp-avg-nan", fill("optimizer", "state", 0, "exp_avg", value=NAN), ValueError,
     [T, "(optimizer.state.0.exp_avg)", "not finite"]),
    ("optimizer-exp-avg-sq-inf", fill("optimizer", "state", 1, "exp_avg_sq", value=INF), ValueError,
     [T, "(optimizer.state.1.exp_avg_sq)", "not finite"]),
    ("optimizer-step-nan", fill("optimizer", "state", 0, "step", value=NAN), ValueError, [T, "(optimizer.state.0.step)"]),
    ("tensor-deleted", lambda d: edit_tensors(d, lambda s: s.pop(tensor_key(d, "adapter", Q))), ValueError,
     [T, f"missing: {S} refers to it for adapter.{Q}"]),
    ("extra-tensor", lambda d: edit_tensors(d, lambda s: s.__setitem__("t999", torch.zeros(2))), ValueError,
     [T, "t999: not referred to by state.json"]),
    ("tensor-referred-twice", edit_state_json(lambda e: e.append(["again", {"__tensor__": "t0"}])), ValueError,
     [S, "tensor t0 is referred to twice"]),
]  # fmt: skip

LATEST_CASES = [
    ("latest-garbage", lambda c: (c / LATEST).write_text("../../etc"), ValueError, [LATEST, "'../../etc'", "step-00000012"]),
    ("latest-binary", lambda c: (c / LATEST).write_bytes(b"\xff\xfe"), ValueError, [LATEST, "expected the name of a checkpoint"]),
    ("latest-names-missing-step", lambda c: (c / LATEST).write_text("step-00000009"), FileNotFoundError, [LATEST, "step-00000009"]),
    ("step-folder-deleted", lambda c: shutil.rmtree(c / STEP), FileNotFoundError, [LATEST, STEP, "does not exist"]),
]  # fmt: skip


def resume(ckpt):
    return train(tiny_llama(), tiny_examples(), CONFIG, checkpoint_dir=ckpt, progress=False)


@pytest.mark.parametrize("tamper, exc, needles", [c[1:] for c in RESUME_CASES], ids=[c[0] for c in RESUME_CASES])
def test_tampered_step_folder_is_refused_on_resume(ckpt, tamper, exc, needles):
    tamper(ckpt / STEP)
    with pytest.raises(exc) as info:
        resume(ckpt)
    message = str(info.value)
    assert str(ckpt / STEP) in message, message
    for needle in needles:
        assert needle in message, (needle, message)


@pytest.mark.parametrize("tamper, exc, needles", [c[1:] for c in LATEST_CASES], ids=[c[0] for c in LATEST_CASES])
def test_tampered_latest_is_refused_on_resume(ckpt, tamper, exc, needles):
    tamper(ckpt)
    with pytest.raises(exc) as info:
        resume(ckpt)
    message = str(info.value)
    assert str(ckpt) in message, message
    for needle in needles:
        assert needle in message, (needle, message)


# What `train` must check before it copies the state into the model and the optimizer
# (`check_training_state`; the trainer's own KeyError / RuntimeError would come first otherwise).
STATE_CASES = [
    ("adapter-parameter-missing", drop_adapter_entry, [T, f"adapter.{Q}: missing"]),
    ("adapter-wrong-shape", lambda d: edit_tensors(d, lambda s: s.__setitem__(tensor_key(d, "adapter", Q), torch.zeros(3, 3))),
     [T, f"adapter.{Q}", "(3, 3); expected a floating tensor of shape (32, 32)"]),
    ("adapter-wrong-dtype", lambda d: edit_tensors(d, lambda s: s.__setitem__(tensor_key(d, "adapter", Q), torch.zeros(32, 32, dtype=torch.int64))),
     [T, f"adapter.{Q}", "torch.int64"]),
    ("step-missing", drop_entry("step"), [S, "step: missing"]),
    ("step-negative", edit_state_json(lambda e: e.__setitem__(0, ["step", -1])), [S, "step: got -1"]),
    ("losses-wrong-count", edit_state_json(lambda e: next(v for k, v in e if k == "losses")["__list__"].pop()), [S, "losses: expected 2 numbers"]),
    ("rng-state-wrong", lambda d: edit_tensors(d, lambda s: s.__setitem__(tensor_key(d, "rng_cpu"), torch.zeros(3, dtype=torch.uint8))),
     [T, "rng_cpu", "expected uint8"]),
    ("optimizer-missing", drop_entry("optimizer"), [S, "optimizer: missing"]),
    ("config-missing", drop_entry("config"), [S, "config: missing"]),
]  # fmt: skip


@pytest.mark.parametrize("tamper, needles", [c[1:] for c in STATE_CASES], ids=[c[0] for c in STATE_CASES])
def test_tampered_training_state_is_refused(ckpt, tamper, needles):
    tamper(ckpt / STEP)
    path = latest_checkpoint(ckpt)
    with pytest.raises(ValueError) as info:
        check_training_state(load_checkpoint(path), path, trainable_parameters(tiny_llama()))
    message = str(info.value)
    assert str(ckpt / STEP) in message, message
    for needle in needles:
        assert needle in message, (needle, message)


def test_untampered_state_passes_and_resumes(ckpt):
    path = latest_checkpoint(ckpt)
    check_training_state(load_checkpoint(path), path, trainable_parameters(tiny_llama()))
    assert resume(ckpt).resumed_from == 2


def test_nonfinite_state_can_be_read_when_asked(ckpt):
    fill("adapter", Q, value=NAN)(ckpt / STEP)
    state = load_checkpoint(ckpt / STEP, allow_nonfinite=True)
    assert torch.isnan(state["adapter"][Q]).sum() == 1


# ---- leftovers of killed writers --------------------------------------------------------------------------


def test_leftovers_of_dead_writers_are_removed_and_live_ones_spared(ckpt):
    dead = [ckpt / ".step-00000003.tmp-999999999-abcd", ckpt / ".latest.tmp-999999999-beef", ckpt / ".step-00000001.old-999999999-0000"]
    legacy = [ckpt / ".step-00000003.k2j4_x9a", ckpt / ".latest.tmp"]  # tempfile names of earlier versions
    live = ckpt / f".step-00000004.tmp-{os.getpid()}-abcd"
    for p in dead[::2] + legacy[:1] + [live]:
        p.mkdir()
        (p / TENSORS_FILE).write_bytes(b"half")
    for p in dead[1::2] + legacy[1:]:
        p.write_text("step-")
    assert latest_checkpoint(ckpt).name == STEP
    assert sorted(p.name for p in ckpt.iterdir()) == sorted([LATEST, STEP, live.name])
    assert remove_leftovers(ckpt) == []


KILLER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import qlora.train.checkpoint as ck
    from qlora.atomic import atomic_file
    from qlora.train import TrainConfig, train
    from tests.train.tiny import tiny_examples, tiny_llama

    ckpt, where = sys.argv[1], sys.argv[2]
    real_save, real_write = ck.save_file, ck.write_text

    def save_file(tensors, filename, *args, **kwargs):
        real_save(tensors, filename, *args, **kwargs)
        if where == "tensors" and Path(filename).parent.name.startswith(".step-00000003.tmp-"):
            with open(filename, "r+b") as fh:  # half of the file on disk, then the power goes
                fh.truncate(os.path.getsize(filename) // 2)
            os.kill(os.getpid(), signal.SIGKILL)

    def write_text(path, text):
        if where == "latest" and Path(path).name == "latest" and text == "step-00000003":
            with atomic_file(path) as fh:
                fh.write(text[:4])
                fh.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        return real_write(path, text)

    ck.save_file, ck.write_text = save_file, write_text
    config = TrainConfig(max_steps=5, micro_batch_size=4, grad_accum=1, lr=1e-2, save_every=1)
    train(tiny_llama(), tiny_examples(), config, checkpoint_dir=ckpt, progress=False, on_step=lambda m: print("step", m.step, flush=True))
""")


@pytest.mark.slow  # two fresh Python processes
@pytest.mark.parametrize("where, leftover", [("tensors", ".step-00000003.tmp-"), ("latest", ".latest.tmp-")])
def test_sigkill_during_a_checkpoint_write_then_restart_leaves_nothing(tmp_path, where, leftover):
    """A writer SIGKILLed while writing checkpoint 3 (its tensors, or the `latest` pointer): the restart
    removes its temporary files, resumes from checkpoint 2 and ends where an uninterrupted run ends."""
    ckpt = tmp_path / "ckpt"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", KILLER, str(ckpt), where], env=env, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert proc.stdout.split() == ["step", "1", "step", "2", "step", "3"]
    names = sorted(p.name for p in ckpt.iterdir())
    assert any(n.startswith(leftover) for n in names), names
    assert (ckpt / LATEST).read_text() == "step-00000002"

    config = TrainConfig(max_steps=5, micro_batch_size=4, grad_accum=1, lr=1e-2, save_every=1)
    model = tiny_llama()
    resumed = train(model, tiny_examples(), config, checkpoint_dir=ckpt, progress=False)
    assert resumed.resumed_from == 2 and [m.step for m in resumed.history] == [3, 4, 5]
    assert sorted(p.name for p in ckpt.iterdir()) == [LATEST, "step-00000005"]

    reference_model = tiny_llama()
    reference = train(reference_model, tiny_examples(), config, progress=False)
    assert resumed.losses == reference.losses
    for name, p in trainable_parameters(reference_model).items():
        assert torch.equal(p, trainable_parameters(model)[name]), name


def test_save_checkpoint_refuses_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="keep must be an integer >= 1, got 0"):
        save_checkpoint(tmp_path, 1, {"a": 1}, keep=0)
    with pytest.raises(ValueError, match="step must be an integer >= 0, got -1"):
        save_checkpoint(tmp_path, -1, {"a": 1})
    assert list(tmp_path.iterdir()) == []
