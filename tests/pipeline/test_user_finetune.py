"""`qlora finetune` as a job (`qlora.pipeline.user_finetune`): a refused run leaves nothing behind."""

from pathlib import Path

import pytest

from qlora.config import DataConfig, DataSource, LoRAConfig, ModelConfig, ModelSource, QuantConfig, Targets
from qlora.pipeline.tracking import Tracking
from qlora.pipeline.user_finetune import UserFinetuneJob
from qlora.train.config import TrainConfig
from tests.tiny_text import save_tiny_model

ALPACA = Path(__file__).resolve().parents[1] / "data" / "fixtures" / "alpaca20.jsonl"


def test_targets_matching_no_layer_are_refused_before_anything_is_written(tmp_path, monkeypatch):
    import qlora.pipeline.finetune

    folder = save_tiny_model(tmp_path / "tiny")
    lora = LoRAConfig(rank=4, alpha=8, targets=Targets.NAMES, target_names=("nothing",))
    job = UserFinetuneJob(ModelConfig("tiny", ModelSource.PRETRAINED, path=str(folder)), QuantConfig(), lora, TrainConfig(max_steps=1),
                          DataConfig(source=DataSource.JSONL, path=str(ALPACA)), tmp_path / "out" / "adapter")  # fmt: skip
    monkeypatch.setattr(qlora.pipeline.finetune, "finetune", lambda **kwargs: pytest.fail("trained with targets that match nothing"))
    with pytest.raises(ValueError, match=r"^lora.target_names \['nothing'\] match no linear layer \(layers end in: down_proj, "):
        job.run(Tracking(""), tmp_path / "cache", progress=False)
    assert not (tmp_path / "out").exists()  # before: out/adapter.work/train.safetensors


def test_a_run_failing_before_its_first_checkpoint_removes_its_work_folder(tmp_path, monkeypatch):
    import qlora.pipeline.finetune

    folder = save_tiny_model(tmp_path / "tiny")
    job = UserFinetuneJob(ModelConfig("tiny", ModelSource.PRETRAINED, path=str(folder)), QuantConfig(), LoRAConfig(rank=4, alpha=8),
                          TrainConfig(max_steps=1), DataConfig(source=DataSource.JSONL, path=str(ALPACA)), tmp_path / "adapter")  # fmt: skip

    def fails(**kwargs):
        assert (tmp_path / "adapter.work" / "train.safetensors").is_file()
        raise ValueError("refused while loading")

    monkeypatch.setattr(qlora.pipeline.finetune, "finetune", fails)
    with pytest.raises(ValueError, match="refused while loading"):
        job.run(Tracking(""), tmp_path / "cache", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]
