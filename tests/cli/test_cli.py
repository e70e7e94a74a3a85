"""The `qlora` command line as a user runs it: --help everywhere, one-line errors naming the argument and
the allowed values, and the done-when check: `qlora finetune` on a 20-line JSONL of one's own data
gives an adapter that `peft.PeftModel.from_pretrained` loads; then info, quantize, eval and merge."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qlora.cli.main import main
from tests.peers import peer

ROOT = Path(__file__).resolve().parents[2]
ALPACA = ROOT / "tests" / "data" / "fixtures" / "alpaca20.jsonl"
CHAT = ROOT / "tests" / "data" / "fixtures" / "chat4.jsonl"
COMMANDS = ("quantize", "finetune", "eval", "merge", "export", "info", "pipeline")


def run(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main(list(map(str, argv)))
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_lists_the_subcommands_and_each_has_help(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and all(c in out for c in COMMANDS)
    for command in COMMANDS:
        code, out, _ = run(capsys, command, "--help")
        assert code == 0 and out.startswith(f"usage: qlora {command}"), command
    code, out, _ = run(capsys, "finetune", "--help")
    assert "quant={af4,af4_dq,bf16,fp4,fp4_e3m0,fp8_e4m3,fp8_e5m2,int4,int8,mxfp4,nf4,nf4_dq,nf4_dq_e4m4,nvfp4}" in out and "data.path" in out
    assert "model={gemma3_270m,llama2_7b,minilm,qwen25_coder_05b,smollm2}" in out  # tiny_llama is not offered: it could not run
    assert "~5 s per step" in out  # what it costs, before one waits
    assert "5-shot MMLU ~4-10 s per question" in run(capsys, "eval", "--help")[1]


def test_the_entry_point_runs_as_a_module():
    done = subprocess.run([sys.executable, "-m", "qlora", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0 and "finetune" in done.stdout
    assert 'qlora = "qlora.cli.main:main"' in (ROOT / "pyproject.toml").read_text()


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (["bogus"], 2, "qlora: error: argument COMMAND: invalid choice: 'bogus' (choose from 'quantize', 'finetune', 'eval', 'merge', "
                       "'export', 'info', 'pipeline')"),
        (["export", "a"], 2, "qlora export: error: the following arguments are required: --gguf"),
        (["export", "a", "--gguf", "x.gguf", "--type", "q5_k"], 2,
         "qlora export: error: argument --type: invalid choice: 'q5_k' (choose from 'bf16', 'f16', 'q8_0', 'q4_0')"),
        (["merge", "a", "--out", "b", "--into", "fp4"], 2,
         "qlora merge: error: argument --into: invalid choice: 'fp4' (choose from 'bf16', 'nf4')"),
        (["finetune", "data.path=x.jsonl"], 2, "qlora finetune: error: the following arguments are required: --out"),
        (["finetune", "--out", "a", "quant=fp5"], 2, "qlora finetune: error: quant=fp5: expected one of af4, af4_dq, bf16, fp4, fp4_e3m0, "
                                                     "fp8_e4m3, fp8_e5m2, int4, int8, mxfp4, nf4, nf4_dq, nf4_dq_e4m4, nvfp4 (conf/quant/)"),
        (["finetune", "--out", "a", "train.max_steps=abc", "data.path=x.jsonl"], 2,
         "qlora finetune: error: train.max_steps='abc': expected an integer"),
        (["finetune", "--out", "a", "train.max_stepz=3"], 2, "qlora finetune: error: train.max_stepz: no such key; train has: "),
        (["finetune", "--out", "a", "data.format=xml", "data.path=x.jsonl"], 2,
         "qlora finetune: error: data.format='xml': expected one of AUTO, ALPACA, CHAT (RecordFormat, case-insensitive)"),
        (["finetune", "--out", "a"], 2, "qlora finetune: error: data.path: expected your data"),
        (["finetune", "--out", "a", "lora"], 2, "qlora finetune: error: 'lora': expected an override key=value"),
        (["eval", "m", "--tasks", "mmlu,bleu"], 2, "qlora eval: error: argument --tasks: invalid choice: 'bleu' (choose from mmlu, perplexity, rouge)"),
        (["quantize", "m", "--out", "a", "--bits", "4"], 2, "qlora: error: unrecognized arguments: --bits"),
        (["finetune", "--out", "a", "data.path=does/not/exist.jsonl"], 1,
         "qlora finetune: error: does/not/exist.jsonl: the data file (data.path) does not exist"),
        (["info", "no/such/folder"], 1, "qlora info: error: no/such/folder: no such folder"),
        # issue 21's friction: the right key, the right name, the user's terms
        (["finetune", "--out", "a", "eval.perplexity_windows=3", "data.path=x.jsonl"], 2,
         "qlora finetune: error: eval.perplexity_windows: no such key; eval has: base_mmlu_questions, batch_size, heldout_examples, "
         "max_new_tokens, mmlu_questions, mmlu_shots, rouge_examples, seed, val_every, val_examples; did you mean data.perplexity_windows?\n"),
        (["finetune", "--out", "a", "train.max_stepz=3"], 2, "qlora finetune: error: train.max_stepz: no such key; train has: "),
        (["finetune", "--out", "a", "model=smolm2", "data.path=x.jsonl"], 2,
         "qlora finetune: error: model=smolm2: expected one of gemma3_270m, llama2_7b, minilm, qwen25_coder_05b, smollm2 (conf/model/), "
         "or a model folder or hub id; did you mean smollm2?\n"),
        (["finetune", "--out", "a", "lora.rank=0", "data.path=x.jsonl"], 2,
         "qlora finetune: error: lora.rank=0: expected an integer >= 1: the rank r of the LoRA adapters (the paper uses 64; 8-64 is usual)\n"),
        (["finetune", "--out", "a", "train.lr=abc", "data.path=x.jsonl"], 2, "qlora finetune: error: train.lr='abc': expected a finite number\n"),
        (["quantize", "../nonexistent/model", "--out", "a"], 1, "qlora quantize: error: ../nonexistent/model: no such model folder\n"),
        (["quantize", "tiny_llama", "--out", "a"], 1, "qlora quantize: error: tiny_llama: no such model folder, and no hub id available here "
                                                      "(offline); the embedded models load offline by name: smollm2, gemma3_270m, "
                                                      "qwen25_coder_05b, minilm\n"),
    ],
)
def test_bad_arguments_give_one_line(capsys, argv, code, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths (--out a) land here; none may be written
    got, out, err = run(capsys, *argv)
    assert got == code
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(message), err
    assert [p.name for p in tmp_path.iterdir()] in ([], ["cache"])  # (the test's QLORA_CACHE)


def test_finetune_on_your_own_jsonl_gives_a_peft_adapter(capsys, tmp_path, tiny_model_dir):
    peft = peer("peft")
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out = tmp_path / "adapter"
    code, stdout, err = run(capsys, "finetune", "--out", out, f"model={tiny_model_dir}", f"data.path={ALPACA}", "train.max_steps=3",
                            "lora=small", "quant=nf4_dq", "--quiet", "--no-mlflow")  # fmt: skip
    assert code == 0, err
    assert "20 of 20 records, 3 steps" in stdout
    assert not (tmp_path / "adapter.work").exists()  # finished: the resumable state is gone
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_dir) and config["r"] == 8
    record = json.loads((out / "train_record.json").read_text())[0]
    assert record["quant"] == "nf4_dq" and record["steps"] == 3 and len(record["losses"]) == 3
    from qlora.config import ComputeDtype  # conf/quant says NATIVE: the record says what it resolved to here

    assert record["seed"] == 0 and record["compute_dtype"] == str(ComputeDtype.NATIVE.resolve("cpu")).removeprefix("torch.")

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = peft.PeftModel.from_pretrained(base, str(out))
    saved = load_file(out / "adapter_model.safetensors")
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
    loaded = dict(model.named_parameters())[key.replace("lora_B.weight", "lora_B.default.weight")]
    assert torch.equal(loaded, saved[key]) and saved[key].abs().sum() > 0  # trained, and loaded as trained

    code, stdout, _ = run(capsys, "info", out)
    assert code == 0 and "kind            adapter" in stdout and "data_type       nf4" in stdout and "4.127" in stdout


def test_a_killed_finetune_resumes_when_run_again(capsys, tmp_path, tiny_model_dir, monkeypatch):
    from qlora.pipeline import tracking

    out = tmp_path / "adapter"
    argv = ["finetune", "--out", out, f"model={tiny_model_dir}", f"data.path={CHAT}", "train.max_steps=4", "train.save_every=2",
            "lora=small", "--quiet", "--no-mlflow"]  # fmt: skip
    original = tracking.LiveRun.on_step

    def killed_after_3(self, metrics):
        original(self, metrics)
        if metrics.step == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(tracking.LiveRun, "on_step", killed_after_3)
    code, _, err = run(capsys, *argv)
    assert code == 130 and "resumes when run again" in err
    assert (tmp_path / "adapter.work").is_dir() and not out.exists()
    monkeypatch.setattr(tracking.LiveRun, "on_step", original)
    code, stdout, err = run(capsys, *argv)
    assert code == 0 and "resuming from" in err and "4 steps, resumed at step 2" in stdout, (stdout, err)


def test_quantize_info_eval_merge(capsys, tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    q = tmp_path / "fp4"
    code, stdout, err = run(capsys, "quantize", tiny_model_dir, "--out", q, "quant=fp4", "--quiet", "--no-mlflow")
    assert code == 0, err
    assert "as fp4 (block 64), 4.500 bits/param, 14 quantized layers" in stdout
    code, stdout, _ = run(capsys, "info", q, "--json")
    info = json.loads(stdout)
    assert info["kind"] == "quantized model" and info["data_type"] == "fp4" and info["quantized_layers"] == 14
    assert info["stored_bits_per_param"] == pytest.approx(4.5, abs=0.01)

    bf16 = tmp_path / "bf16"
    assert run(capsys, "quantize", tiny_model_dir, "--out", bf16, "quant=bf16", "--quiet", "--no-mlflow")[0] == 0
    info = json.loads(run(capsys, "info", bf16, "--json")[1])
    assert info["kind"] == "model" and info["data_type"] == "bf16" and info["tensor_dtypes"] == {"bf16": info["params"]}

    adapter = tmp_path / "adapter"
    assert run(capsys, "finetune", "--out", adapter, f"model={tiny_model_dir}", f"data.path={ALPACA}", "train.max_steps=2", "lora=small",
               "quant=fp4", "--quiet", "--no-mlflow")[0] == 0  # fmt: skip
    results = tmp_path / "results.json"
    code, stdout, err = run(capsys, "eval", tiny_model_dir, "--adapter", adapter, "--json", results, "eval.mmlu_questions=4",
                            "eval.mmlu_shots=1", "data.perplexity_windows=2", "data.perplexity_window_tokens=16", f"data.path={CHAT}",
                            "eval.max_new_tokens=3", "--quiet", "--no-mlflow")  # fmt: skip
    assert code == 0, err
    scores = json.loads(results.read_text())
    assert set(scores) == {"mmlu", "perplexity", "rougeL"}
    assert scores["mmlu"]["n"] == 4 and 0 <= scores["mmlu"]["value"] <= 1 and scores["perplexity"]["value"] > 1 and scores["rougeL"]["n"] == 4

    merged = tmp_path / "merged"
    code, stdout, err = run(capsys, "merge", adapter, "--out", merged, "--quiet", "--no-mlflow")
    assert code == 0, err
    model = AutoModelForCausalLM.from_pretrained(merged)
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    assert (merged / "tokenizer.json").is_file()


def test_export_gguf_and_merge_into_nf4(capsys, tmp_path, tiny_model_dir):
    """`qlora export` of an adapter writes a GGUF transformers loads (its logits those of the merged model, q8_0
    rounding aside), refuses to replace a file it did not write, and `merge --into nf4` warns with the cost."""
    gguf = peer("gguf")
    from transformers import AutoModelForCausalLM

    from qlora.cli.commands import NF4_MERGE_COST
    from qlora.models.pretrained import from_pretrained
    from qlora.nn.linear import QLoRALinear
    from qlora.quant.dtypes import DataType

    adapter = tmp_path / "adapter"
    assert run(capsys, "finetune", "--out", adapter, f"model={tiny_model_dir}", f"data.path={ALPACA}", "train.max_steps=2", "lora=small",
               "--quiet", "--no-mlflow")[0] == 0  # fmt: skip
    out = tmp_path / "model.gguf"
    code, stdout, err = run(capsys, "export", adapter, "--gguf", out, "--type", "q8_0", "--no-mlflow")
    assert code == 0, err
    assert stdout.startswith(f"{out}: llama, 0.0M parameters as q8_0 (21 tensors: 5 F32, 16 Q8_0), ")
    assert gguf.GGUFReader(out).fields["general.architecture"].contents() == "llama"
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=out.name, dtype=torch.float32).eval()
    from qlora.models.surgery import merge_and_unload

    merged = merge_and_unload(from_pretrained(tiny_model_dir, adapter=adapter), torch.float32).eval()
    ids = torch.tensor([[5, 17, 99, 3, 250, 7]])
    with torch.no_grad():
        a, b = merged(ids).logits, loaded(ids).logits
    assert float((a - b).norm() / a.norm()) < 0.02

    notes = tmp_path / "notes.gguf"
    notes.write_text("not a model")
    capsys.readouterr()  # the loads' progress bars
    code, _, err = run(capsys, "export", adapter, "--gguf", notes, "--no-mlflow")
    assert code == 1 and err.count("\n") == 1 and "not a GGUF file written by qlora export; pass overwrite=True (--overwrite)" in err
    assert notes.read_text() == "not a model"
    code, _, err = run(capsys, "export", tmp_path / "nothing", "--gguf", notes, "--no-mlflow")
    assert code == 2 and err.startswith("qlora export: error: SOURCE: expected an adapter folder")

    nf4 = tmp_path / "nf4"
    code, stdout, err = run(capsys, "merge", adapter, "--out", nf4, "--into", "nf4", "--quiet", "--no-mlflow")
    assert code == 0, err
    assert err.startswith("warning: --into nf4 re-quantizes the merged weights to NF4+DQ") and NF4_MERGE_COST in err
    assert "merged and re-quantized to NF4+DQ" in stdout
    model = from_pretrained(nf4)
    layers = [m for m in model.modules() if isinstance(m, QLoRALinear)]
    assert len(layers) == 14 and {m.weight.dtype for m in layers} == {DataType.NF4} and all(m.nested_codes is not None for m in layers)
    assert all(m.lora_a is None for m in layers)  # the update is in the weights now, no adapter


def test_pipeline_wraps_dvc(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    code, _, err = run(capsys, "pipeline", "sweep", "quant=nf4,fp4", "--dry-run", "-j", "2")
    lines = [line.split(" ", 1)[1] for line in err.splitlines()]
    assert code == 0 and len(lines) == 3
    assert lines[0].endswith("exp run --queue -S quant=nf4,fp4") and lines[1].endswith("exp run --run-all --jobs 2")
    assert lines[2].endswith("exp show --only-changed")
    code, _, err = run(capsys, "pipeline", "repro", "prepare_data", "--dry-run")
    assert code == 0 and err.strip().endswith("repro prepare_data")


def test_pipeline_outside_the_repository_says_where_to_run(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "pipeline", "status")
    assert code == 2 and "no dvc.yaml in" in err and err.count("\n") == 1
