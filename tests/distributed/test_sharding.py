"""FSDP2 sharding of quantized models on 2 CPU ranks: exact dequantization under a bf16 policy, uneven
and replicated rows, the 4-bit bytes each rank holds, and saving once, byte for byte."""


import torch

import qlora
from qlora.models.saving import Save
from tests.distributed import workers
from tests.distributed.ranks import run_ranks


def test_dequantized_weights_are_bit_exact_under_a_bf16_mixed_precision_policy():
    model = workers.tiny_qlora()
    reference = {n: qlora.dequantize(m.weight, torch.float32) for n, m in workers.quantized_layers(model).items()}
    for seen in run_ranks(workers.dequantized_in_forward, True):
        assert seen.keys() == reference.keys()
        for name, (weight, lora_dtype, storage) in seen.items():
            assert lora_dtype == torch.bfloat16  # the policy is active: floating parameters are gathered in bf16
            assert storage == "Parameter"  # inside forward: the gathered tensor, not the DTensor shard
            assert torch.equal(weight, reference[name]), name


def test_uneven_rows_shard_and_rows_that_split_blocks_are_replicated_with_a_warning():
    ranks = run_ranks(workers.shard_layout)
    for rank, got in enumerate(ranks):
        assert got["forward_matches"]  # fp32 on CPU: sharding changes nothing in the forward
        # 9 rows on 2 ranks: 5 + 4 (torch.chunk), each row 64 / 2 bytes of codes
        assert got["local_rows"]["layers.0.0"] == ((5, 32), (4, 32))[rank]
        assert got["local_rows"]["layers.1.0"] == ((24, 32), (24, 32))[rank]
        assert got["types"]["layers.1.1"] == "Parameter"  # 48 % 32 != 0: every rank holds it whole
        assert got["report"].replicated == ("layers.0.1", "layers.1.1")
        assert len(got["warnings"]) == 1 and "layers.0.1" in got["warnings"][0] and "layers.1.1" in got["warnings"][0]


def test_each_rank_holds_about_half_of_the_4bit_bytes():
    model = workers.tiny_qlora(block_size=32, hidden=64, intermediate=128)
    assert all(m.row_shardable for m in workers.quantized_layers(model).values())
    ranks = run_ranks(workers.train_tiny_bytes)
    total = ranks[0]["total"]
    assert total == ranks[1]["total"] > 0
    for got in ranks:
        # the codes and the block constants' codes split by rows (64 and 128 rows: evenly)
        assert got["local"] == total // 2, (got["local"], total)


def test_saving_a_sharded_model_gathers_it_once_and_writes_the_single_process_bytes(tmp_path):
    model = workers.tiny_qlora(block_size=64, hidden=64, intermediate=128)
    with torch.no_grad():
        for m in workers.quantized_layers(model).values():
            m.lora_b.normal_(generator=torch.Generator().manual_seed(7))
    qlora.save_pretrained(model, tmp_path / "one", what=Save.ADAPTER | Save.QUANTIZED_MODEL)
    ranks = run_ranks(workers.save_sharded, str(tmp_path / "two"))
    assert all(r["still_sharded"] for r in ranks)  # the whole tensors were lent for the save only
    one = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    two = sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*") if p.is_file())
    assert one == two and any(p.name == "model.safetensors" for p in one) and any(p.name == "adapter_model.safetensors" for p in one)
    for rel in one:
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes(), rel
    # and the written folder loads back to the same quantized state and adapter
    back = qlora.from_pretrained(tmp_path / "two")
    for name, m in workers.quantized_layers(model).items():
        got = back.get_submodule(name)
        for field in ("qweight", "nested_codes"):
            assert torch.equal(getattr(got, field), getattr(m, field)), (name, field)
        assert torch.equal(got.lora_b, m.lora_b) and torch.equal(got.lora_a, m.lora_a)
