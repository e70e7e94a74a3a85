"""Training a transformers model with gradient checkpointing prints no "`use_cache=True` is incompatible"
notice (the trainer turns the KV cache off while it trains, as transformers would) and gives the cache back
afterwards, so generation after training is as fast as before."""

from __future__ import annotations

import transformers.utils.logging as hf_logging

from qlora.train import TrainConfig, train
from tests.train.tiny import tiny_examples, tiny_llama


def test_no_cache_notice_and_the_cache_is_given_back(caplog):
    model = tiny_llama()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert model.config.use_cache is True
    hf_logging.logging.Logger.warning_once.cache_clear()  # transformers says it once per process: make it able to say it
    with caplog.at_level("WARNING"):
        result = train(model, tiny_examples(8), TrainConfig(max_steps=2, micro_batch_size=2), progress=False)
    notices = [r.getMessage() for r in caplog.records if "use_cache" in r.getMessage()]
    assert result.steps == 2 and notices == []
    assert model.config.use_cache is True
