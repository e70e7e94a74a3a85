"""A tiny profile of the pipeline: the real stage jobs (quantize, evaluate_base, train, evaluate, report)
on a tiny random Llama and a tiny BERT with an offline-trained tokenizer, a few steps each, token files
made from fixtures (`write_tiny_data` stands in for prepare_data).

Used by tests/pipeline/test_tracking_compare.py (MLflow's REST API sees one comparable row per data
type) and, by hand, for the compare-view screenshot in reports/:

    PYTHONPATH=. python -m tests.pipeline.tiny_profile /tmp/tiny-run http://127.0.0.1:5000
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DTYPES = ("bf16", "fp4", "nf4_dq")


def write_tiny_models(folder: Path) -> tuple[Path, Path]:
    """(causal LM folder, sequence classifier folder), each with a tokenizer."""
    from transformers import BertConfig, BertForSequenceClassification

    from tests.tiny_text import tiny_llama, tiny_tokenizer

    tok = tiny_tokenizer()
    causal, encoder = folder / "tiny-llama", folder / "tiny-bert"
    model = tiny_llama(len(tok))
    model.config.pad_token_id, model.config.eos_token_id = tok.pad_token_id, tok.eos_token_id
    model.save_pretrained(causal)
    tok.save_pretrained(causal)
    import torch

    torch.manual_seed(0)
    bert = BertForSequenceClassification(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                    intermediate_size=64, num_labels=3, pad_token_id=tok.pad_token_id))  # fmt: skip
    bert.save_pretrained(encoder)
    tiny_tokenizer(chat_template=False).save_pretrained(encoder)
    return causal, encoder


def tiny_params(causal: Path, encoder: Path):
    """conf/ composed (the same groups as params.yaml) with the tiny models, three data types, a few steps."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from qlora.pipeline.params import pipeline_config

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        data = OmegaConf.to_container(compose(config_name="config", overrides=["lora=small"]), resolve=True)
    data["models"] = {"causal": {"name": "tiny-llama", "source": "PRETRAINED", "kind": "CAUSAL_LM", "path": str(causal)},
                      "encoder": {"name": "tiny-bert", "source": "PRETRAINED", "kind": "SEQ_CLS", "path": str(encoder)}}  # fmt: skip
    data["ablation"].update({"base_models": ["causal"], "base_quants": list(DTYPES), "encoder_seeds": [0], "causal_seeds": [0],
                        "untuned_quants": ["bf16"], "base_mmlu_quants": [],
                        "causal": {"lora_bf16": {"method": "LORA", "quant": "bf16"}, "qlora_fp4": {"method": "QLORA", "quant": "fp4"},
                                   "qlora_nf4_dq": {"method": "QLORA", "quant": "nf4_dq"}},
                        "encoder": {"lora_bf16": {"method": "LORA", "quant": "bf16"}, "qlora_fp4": {"method": "QLORA", "quant": "fp4"},
                                    "qlora_nf4_dq": {"method": "QLORA", "quant": "nf4_dq"}}})  # fmt: skip
    for section in ("train", "train_encoder"):
        data[section].update(max_steps=4, micro_batch_size=2, save_every=0, lr=1e-2)
    data["eval"].update(base_mmlu_questions=4, mmlu_questions=4, mmlu_shots=1, rouge_examples=2, max_new_tokens=2, batch_size=4)
    data["data"].update(perplexity_windows=2, perplexity_window_tokens=16)
    data["profile"] = "tiny"
    return pipeline_config(data)


def write_tiny_data(params, data_dir: Path) -> None:
    """The token files prepare_data would write, from the fixtures (no download)."""
    from transformers import AutoTokenizer

    from qlora.config import DataConfig
    from qlora.data.mmlu import load_mmlu
    from qlora.data.prepared import (CLS_LABELS, CLS_TEST, CLS_TRAIN, INSTRUCT_HELDOUT, INSTRUCT_HELDOUT_TASKS, INSTRUCT_TEST,
                                     INSTRUCT_TRAIN, INSTRUCT_VAL, INSTRUCT_VAL_TASKS, PERPLEXITY_TEXT)  # fmt: skip
    from qlora.data.tokenization import response_tail_tokens
    from qlora.data.tokenization import TokenizedDataset, encode_instruction, tokenize_classification
    from qlora.data.user import load_user_data, tokenize_user_data
    from qlora.pipeline import paths

    data_dir.mkdir(parents=True, exist_ok=True)
    causal = AutoTokenizer.from_pretrained(paths.model_dir("causal"))
    encoder = AutoTokenizer.from_pretrained(paths.model_dir("encoder"))
    user = load_user_data(DataConfig(source="jsonl", path=str(ROOT / "tests" / "data" / "fixtures" / "alpaca20.jsonl")))
    tokenize_user_data(causal, user, max_length=params.data.max_length).dataset.save(data_dir / INSTRUCT_TRAIN)
    test = [{"subtask": "fixture", "prompt": c.prompt, "references": [c.reference]} for c in user.conversations[:4]]
    (data_dir / INSTRUCT_TEST).write_text(json.dumps({"held_out_subtasks": ["fixture"], "examples": test}))
    for tokens, sidecar, convs in ((INSTRUCT_HELDOUT, INSTRUCT_HELDOUT_TASKS, user.conversations[:4]),
                                   (INSTRUCT_VAL, INSTRUCT_VAL_TASKS, user.conversations[4:8])):  # fmt: skip
        TokenizedDataset.from_examples([encode_instruction(causal, c.prompt, c.reference) for c in convs]).save(data_dir / tokens)
        (data_dir / sidecar).write_text(json.dumps({"tasks": ["fixture"] * len(convs),
                                                    "template_tail": [response_tail_tokens(causal, c.prompt, c.reference) for c in convs]}))
    colours = ("red", "green", "blue")

    class Example:
        def __init__(self, i: int) -> None:
            self.text, self.label = f"the cat sat on the {colours[i % 3]} mat {i}", i % 3

    tokenize_classification(encoder, [Example(i) for i in range(24)]).save(data_dir / CLS_TRAIN)
    tokenize_classification(encoder, [Example(i) for i in range(24, 36)]).save(data_dir / CLS_TEST)
    (data_dir / CLS_LABELS).write_text(json.dumps({"task": "tiny colours", "labels": list(colours)}))
    stems = [q.question for q in load_mmlu()[:200]]
    (data_dir / PERPLEXITY_TEXT).write_text(json.dumps({"source": "MMLU question stems", "texts": stems}))


def run_tiny_profile(work: Path, tracking) -> None:
    """Every stage of the tiny profile in `work` (the working directory must be `work`), logging to `tracking`."""
    from qlora.pipeline import paths
    from qlora.pipeline.evaluate import plan_base_eval, plan_causal_eval, plan_encoder_eval
    from qlora.pipeline.finetune import plan_train
    from qlora.pipeline.models import plan_prepare_model
    from qlora.pipeline.quantize import plan_quantize
    from qlora.pipeline.report import plan_report

    causal, encoder = write_tiny_models(work / "sources")
    params = tiny_params(causal, encoder)
    for key in ("causal", "encoder"):
        plan_prepare_model(params, key).run(tracking)
    write_tiny_data(params, paths.data_dir())
    for q in DTYPES:
        plan_quantize(params, "causal", q).run(tracking)
        plan_base_eval(params, "causal", q).run(tracking, progress=False)
    for row in params.ablation.causal:
        plan_train(params, "causal", row).run(tracking, progress=False)
        plan_causal_eval(params, row).run(tracking, progress=False)
    for row in params.ablation.encoder:
        plan_train(params, "encoder", row).run(tracking, progress=False)
        plan_encoder_eval(params, row).run(tracking, progress=False)
    plan_report(params).run(tracking)


if __name__ == "__main__":
    import os

    from qlora.pipeline.tracking import Tracking

    out = Path(sys.argv[1]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(out)
    run_tiny_profile(out, Tracking(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "qlora-tiny"))
