"""The pipeline's training job on 2 ranks: train.nproc_per_node launches stages/train.py under torchrun,
and the job's outputs are those of one process (up to fp32 summation order)."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qlora.checks import ConfigError
from qlora.config import ComputeDtype, LoRAConfig, Method, ModelKind, QuantConfig
from qlora.pipeline.finetune import TrainJob
from qlora.pipeline.ranks import job_from_json, job_to_json
from qlora.pipeline.tracking import Tracking
from qlora.quant.dtypes import DataType
from qlora.train import Schedule, TrainConfig
from tests.distributed import workers

ROOT = Path(__file__).resolve().parents[2]
QUANT = QuantConfig(DataType.NF4, True, 32, ComputeDtype.FP32)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    """A quantized tiny Llama checkpoint folder and a token file of 13 examples."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from qlora.data.tokenization import TokenizedDataset
    from qlora.models.loading import quantize_checkpoint

    root = tmp_path_factory.mktemp("pipeline")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=64, attention_dropout=0.0)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(root / "base")
    quantize_checkpoint(root / "base", ModelKind.CAUSAL_LM, QUANT, root / "quantized")
    TokenizedDataset.from_examples(workers.examples(13)).save(root / "train.safetensors")
    return root / "quantized", root / "train.safetensors"


def job(inputs, out: Path, **train) -> TrainJob:
    config = TrainConfig(**{**dict(max_steps=3, micro_batch_size=4, grad_accum=2, lr=2e-2, warmup_ratio=0.0, save_every=1), **train})
    return TrainJob("causal", "main", "tiny", ModelKind.CAUSAL_LM, Method.QLORA, QUANT, LoRAConfig(rank=4, alpha=8.0, dropout=0.0),
                    config, inputs[0], inputs[1], out_dir=out / "adapter", resume_root=out / "resume",
                    metrics_path=out / "train.json", loss_path=out / "loss.csv")  # fmt: skip


@pytest.fixture
def files(tmp_path) -> tuple[Path, Path]:
    """Stand-ins for a checkpoint folder and a token file (the resume key hashes their bytes)."""
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "data.safetensors").write_bytes(b"tokens")
    return tmp_path / "ckpt", tmp_path / "data.safetensors"


def test_the_resume_key_ignores_ranks_and_cadence_and_max_steps_of_a_constant_schedule(files, tmp_path):
    inputs = files
    base = job(inputs, tmp_path)
    same = [job(inputs, tmp_path, nproc_per_node=2), job(inputs, tmp_path, save_every=2, keep_checkpoints=3),
            job(inputs, tmp_path, max_steps=8)]  # fmt: skip
    assert {j.resume_key() for j in same} == {base.resume_key()}
    other = [job(inputs, tmp_path, lr=1e-2), job(inputs, tmp_path, warmup_ratio=0.2, max_steps=8),
             job(inputs, tmp_path, schedule=Schedule.COSINE), job(inputs, tmp_path, schedule=Schedule.COSINE, max_steps=8)]  # fmt: skip
    assert len({j.resume_key() for j in other} | {base.resume_key()}) == 5
    key = base.resume_key()
    files[1].write_bytes(b"other tokens")
    assert base.resume_key() != key  # other data: another run


def test_a_job_file_round_trips_and_names_bad_fields(files, tmp_path):
    inputs = files
    original = job(inputs, tmp_path, nproc_per_node=2)
    data = json.loads(json.dumps(job_to_json(original, Tracking("http://127.0.0.1:5000", "e"))))
    back, tracking = job_from_json(data)
    assert back == original and tracking == Tracking("http://127.0.0.1:5000", "e")
    data["job"]["train"]["lr"] = -1
    with pytest.raises(ConfigError, match=r"job.train.lr=-1"):
        job_from_json(data)
    with pytest.raises(ConfigError, match="train.nproc_per_node=2: expected 1 here"):
        original.run(Tracking(""))  # no worker entry point to start the ranks with


@pytest.mark.slow
def test_nproc_per_node_2_runs_the_stage_under_torchrun_and_matches_one_process(inputs, tmp_path):
    one = job(inputs, tmp_path / "one")
    one.run(Tracking(""), progress=False)
    two = job(inputs, tmp_path / "two", nproc_per_node=2)
    result = two.run(Tracking(""), progress=False, worker=ROOT / "stages" / "train.py")
    assert result.result is None and len(result.record.losses) == 3
    a = load_file(one.out_dir / "adapter_model.safetensors")
    b = load_file(two.out_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=5e-5)  # see test_training.TIGHT
    losses = [json.loads(p.read_text())[0]["losses"] for p in (one.metrics_path, two.metrics_path)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    assert (two.out_dir / "adapter_config.json").read_text() == (one.out_dir / "adapter_config.json").read_text()
    # the finished run's checkpoint stays (an extension resumes from it); the launch files are gone
    resume = two.resume_root / two.resume_key()
    assert sorted(p.name for p in resume.iterdir()) == ["latest", "step-00000003"]
    longer = dataclasses.replace(two, train=dataclasses.replace(two.train, max_steps=4))
    assert longer.resume_key() == two.resume_key()
