"""benchmarks/source_noise_robustness.py: the in-memory model it scores equals the pipeline's files."""

import torch

from pathlib import Path

from benchmarks.source_noise_robustness import CLAIM_QUANTS, check_pipeline_path, quantized
from qlora.config import DataType, ModelKind, QuantConfig
from qlora.models.loading import load_base
from qlora.models.surgery import linear_modules
from qlora.nn.linear import QLoRALinear
from qlora.pipeline.params import load_params
from qlora.report import labels as L
from qlora.report.labels import DataTypeLabel
from tests.tiny_text import save_tiny_model

NF4_DQ = QuantConfig(DataType.NF4, True)


def test_in_memory_quantized_model_scores_like_the_pipeline_files(tmp_path):
    """The tiny model's embedding is fp32 noise (not bf16 values, like Gemma's F32 norms and Q6_K embedding):
    quantize_checkpoint stores it in bf16, so the in-memory copy must round it too, or every window differs."""
    folder = save_tiny_model(tmp_path / "base")
    reference = load_base(folder, ModelKind.CAUSAL_LM).eval()
    embedding = reference.get_input_embeddings().weight
    assert not torch.equal(embedding, embedding.to(torch.bfloat16).float())  # the case the rounding is for
    weights = {f"{m}.weight": reference.get_parameter(f"{m}.weight").detach().clone() for m in linear_modules(reference)}
    windows = torch.randint(3, embedding.shape[0], (3, 24), generator=torch.Generator().manual_seed(0))

    check = check_pipeline_path(folder, reference, weights, {"nf4_dq": NF4_DQ, "bf16": QuantConfig(DataType.BF16, False)},
                                windows, batch_size=2)  # fmt: skip
    assert check["nf4_dq"] == {"windows": 3, "identical": True, "max_abs_difference": 0.0}
    assert check["bf16"]["identical"] is True


def test_quantized_copy_rounds_only_the_unquantized_tensors(tmp_path):
    reference = load_base(save_tiny_model(tmp_path / "base"), ModelKind.CAUSAL_LM).eval()
    weights = {f"{m}.weight": reference.get_parameter(f"{m}.weight").detach().clone() for m in linear_modules(reference)}
    model = quantized(reference, weights, NF4_DQ)
    layers = {n for n, m in model.named_modules() if isinstance(m, QLoRALinear)}
    assert len(layers) == len(weights)
    embedding = model.get_input_embeddings().weight
    assert torch.equal(embedding, embedding.to(torch.bfloat16).float())
    # the reference is untouched (a deep copy is rounded), so the next data type quantizes the unrounded weights
    assert not torch.equal(reference.get_input_embeddings().weight, embedding)


def test_the_evaluated_types_are_the_ones_claims_a_and_b_compare():
    """The benchmark scores only these keys of the findings profile's ablation: a renamed key would drop a
    type from the verdicts silently."""
    params = load_params(Path(__file__).parents[2] / "findings" / "params.yaml")
    assert set(CLAIM_QUANTS) <= set(params.ablation.base_quants)
    assert {DataTypeLabel.of(params.quants[q]) for q in CLAIM_QUANTS} == {L.BF16, L.INT4, L.FP4, L.FP4_E3M0, L.NF4, L.NF4_DQ}
