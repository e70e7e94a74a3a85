"""`qlora`: the command line (an entry point like stages/: it reads arguments, calls one function of
qlora/pipeline and prints what came out).

    qlora quantize MODEL --out DIR [quant=fp4 ...]        a model folder or hub id -> a 4-bit checkpoint
    qlora finetune --out DIR model=... data.path=my.jsonl  a model + your data -> a PEFT adapter (resumable)
    qlora eval MODEL [--adapter DIR] [--tasks mmlu,...]    MMLU / perplexity / RougeL
    qlora merge ADAPTER --out DIR [--into nf4] [model=BASE] adapter + base -> a bf16 folder (or, with a warning, NF4)
    qlora export SOURCE --gguf FILE [--type q8_0]          adapter + base, or a merged folder -> a GGUF file
    qlora info PATH                                        what a checkpoint or adapter folder holds
    qlora pipeline repro|status|sweep|show|plots|mlflow    the DVC pipeline (dvc repro, sweeps)

Settings are the pipeline's Hydra groups (conf/), overridable with Hydra's syntax (`qlora.cli.compose`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from qlora.cli.compose import UsageError, find_config_dir, group_options

PROG = "qlora"
TASKS = ("mmlu", "perplexity", "rouge")
OVERWRITE_HELP = ("replace --out even if it holds files this command did not write (never allowed: --out equal to, inside or "
                  "holding an input)")
MERGE_TARGETS = ("bf16", "nf4")  # qlora.models.export.MergeTarget values (kept here: --help imports no torch)
GGUF_TYPES = ("bf16", "f16", "q8_0", "q4_0")  # qlora.models.gguf_export.GGUFType values


class _Parser(argparse.ArgumentParser):
    """argparse, with every usage error as one line (no usage dump)."""

    def error(self, message: str) -> None:  # noqa: D102
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _overrides_help(conf: Path | None) -> str:
    if conf is None:
        return "overrides: Hydra syntax over conf/ (run in the repository to list the groups)"
    groups = group_options(conf)
    lines = ["overrides (Hydra syntax over conf/, the pipeline's groups; e.g. quant=fp4 train.max_steps=20 lora=small):"]
    lines += [f"  {g}={{{','.join(o)}}}" for g, o in groups.items() if g != "experiment"]
    lines += ["  model=<folder or hub id>   any transformers causal LM (smollm2, gemma3_270m, qwen25_coder_05b: embedded, offline)", "  <section>.<key>=<value>    any key, e.g. lora.rank=16 eval.mmlu_questions=100"]
    return "\n".join(lines)


def build_parser(conf: Path | None = None) -> argparse.ArgumentParser:
    epilog = _overrides_help(conf)
    fmt = argparse.RawDescriptionHelpFormatter
    parser = _Parser(prog=PROG, description="QLoRA in 4 bits: quantize, fine-tune on your data, evaluate, merge, export, inspect.",
                     epilog="Run `qlora <command> --help` for each command.", formatter_class=fmt)  # fmt: skip
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser, required=True)

    def command(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=description, epilog=epilog, formatter_class=fmt)
        p.add_argument("--config-dir", default=None, help="the Hydra config folder (default: ./conf, else the package's)")
        p.add_argument("--no-mlflow", action="store_true", help="log nothing to MLflow (default: $MLFLOW_TRACKING_URI, else "
                       "sqlite under ~/.cache/qlora-pipeline)")  # fmt: skip
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        return p

    p = command("quantize", "a model folder or hub id -> a 4-bit checkpoint folder",
                "Quantizes every linear layer but the head while loading (peak RAM near the quantized size) and writes the\n"
                "transformers + bitsandbytes 4-bit layout (NF4/FP4 load in transformers too). Any data type: quant=<option>.\n"
                "The embedded models by name (offline): smollm2, gemma3_270m, qwen25_coder_05b (materialised once: ~30-90 s);\n"
                "quantizing SmolLM2-135M then takes ~15 s on 2 CPU cores.")  # fmt: skip
    p.add_argument("model", metavar="MODEL", help="a conf/model option (smollm2, ...), a model folder or a hub id")
    p.add_argument("--out", required=True, help="the checkpoint folder to write (new, empty, or an earlier `qlora quantize` output)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("overrides", nargs="*", metavar="OVERRIDE", help="e.g. quant=fp4 quant.block_size=128")

    p = command("finetune", "a model + your data -> a PEFT adapter (re-run to resume)",
                "Instruction-tunes LoRA adapters on a quantized base (QLoRA; LoRA for quant=bf16) with your JSONL or datasets\n"
                "records (Alpaca instruction/input/output or chat messages), loss on the responses only. The adapter loads with\n"
                "peft.PeftModel.from_pretrained. A killed run resumes when the same command is run again.\n\n"
                "Cost on 2 CPU cores, SmolLM2-135M: ~5 s per step of 4 x 256 tokens (train.micro_batch_size x data.max_length).")  # fmt: skip
    p.add_argument("--out", required=True, help="the adapter folder to write (new, empty, or an earlier `qlora finetune` output)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("overrides", nargs="*", metavar="OVERRIDE",
                   help="e.g. model=smollm2 data.path=my.jsonl train.max_steps=20 quant=fp4")  # fmt: skip

    p = command("eval", "MMLU / perplexity / RougeL of a model (+ an adapter)",
                "Evaluates a model, quantized as it loads (as recorded with the adapter or folder; quant=<option> to choose),\n"
                "with an optional adapter. RougeL scores greedy answers against your records: data.path=heldout.jsonl.\n\n"
                "Cost on 2 CPU cores, SmolLM2-135M: 5-shot MMLU ~4-10 s per question (eval.mmlu_questions=100: 7-17 min;\n"
                "=0 means all 14,042: 16-39 h), 0-shot (eval.mmlu_shots=0) ~3x less; a model 10x larger costs ~10x more.")  # fmt: skip
    p.add_argument("model", metavar="MODEL", help="a conf/model option, a model or checkpoint folder, or a hub id")
    p.add_argument("--adapter", type=Path, default=None, help="a PEFT adapter folder (from `qlora finetune`)")
    p.add_argument("--tasks", default=None, help=f"comma-separated, of {', '.join(TASKS)} (default: mmlu,perplexity; +rouge with data.path)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file (new, or an earlier results file)")
    p.add_argument("--overwrite", action="store_true", help="replace --json even if it is not an earlier results file")
    p.add_argument("overrides", nargs="*", metavar="OVERRIDE", help="e.g. eval.mmlu_questions=200 eval.mmlu_shots=0 data.path=test.jsonl")

    p = command("merge", "adapter + base -> a merged bf16 model folder",
                "Folds the adapter into its base (dequantized exactly as it was trained on) and writes a plain transformers\n"
                "folder in bf16 with the base's tokenizer. The base defaults to the one the adapter names.\n"
                "--into nf4 re-quantizes the merged weights to NF4+DQ instead: it loses part of what fine-tuning gained\n"
                "(printed when used; measured in reports/shipping_costs.md).")  # fmt: skip
    p.add_argument("adapter", metavar="ADAPTER", type=Path, help="the adapter folder")
    p.add_argument("--out", required=True, help="the folder to write (new, empty, or an earlier `qlora merge` output)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--into", choices=MERGE_TARGETS, default="bf16", help="bf16 (default) or nf4 (re-quantized: lossy, see above)")
    p.add_argument("overrides", nargs="*", metavar="OVERRIDE", help="model=<base> when the adapter's recorded base is not available")

    p = command("export", "adapter + base, or a merged folder -> a GGUF file (llama.cpp)",
                "Merges the adapter into its base (or takes a merged/plain model folder) and writes one GGUF file with the\n"
                "tokenizer, as llama.cpp's converter writes Llama, Qwen2 and Gemma 3 (other architectures are refused).\n"
                "Types: bf16 and f16 (lossless for a bf16/f16 merge), q8_0 and q4_0 (ggml's 32-value blocks). An existing\n"
                "file is replaced only if an earlier `qlora export` wrote it, or with --overwrite.")  # fmt: skip
    p.add_argument("source", metavar="SOURCE", type=Path, help="a PEFT adapter folder (from `qlora finetune`) or a model folder")
    p.add_argument("--gguf", required=True, type=Path, help="the .gguf file to write")
    p.add_argument("--type", choices=GGUF_TYPES, default="q8_0", help="the weights' type (default q8_0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file that no `qlora export` wrote")
    p.add_argument("overrides", nargs="*", metavar="OVERRIDE", help="model=<base> when the adapter's recorded base is not available")

    p = sub.add_parser("info", help="what a checkpoint or adapter folder holds", formatter_class=fmt,
                       description="Data type, bits per parameter, sizes and parameter counts of a model, 4-bit checkpoint or adapter folder.")  # fmt: skip
    p.add_argument("path", metavar="PATH", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("pipeline", help="the DVC pipeline: repro, status, sweeps, plots, the MLflow UI", formatter_class=fmt,
                       description="A thin wrapper of DVC (run it in the repository):\n"
                                   "  repro [STAGE ...]        dvc repro: the whole pipeline, or some stages\n"
                                   "  status                   dvc status: what is out of date\n"
                                   "  sweep OVERRIDE ...       one queued DVC experiment per value, then run them:\n"
                                   "                           qlora pipeline sweep quant=nf4,fp4,int8\n"
                                   "  show                     dvc exp show --only-changed: compare experiments\n"
                                   "  plots                    dvc plots show\n"
                                   "  mlflow [--host H] [--port P]\n"
                                   "                           the MLflow UI on the tracking store (this process becomes the\n"
                                   "                           server: `kill PID` stops all of it; loopback unless --host)")  # fmt: skip
    p.add_argument("action", choices=("repro", "status", "sweep", "show", "plots", "mlflow"))
    p.add_argument("args", nargs="*", metavar="ARG")
    p.add_argument("--jobs", "-j", type=int, default=1, help="sweep: experiments run at once")
    p.add_argument("--host", default="127.0.0.1", help="mlflow: the address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5000, help="mlflow: the port (default 5000)")
    p.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    return parser


def _version() -> str:
    from qlora import __version__

    return __version__


def _env_tracking(disabled: bool):
    from qlora.pipeline.tracking import Tracking, default_tracking

    if disabled:
        return Tracking("")
    return default_tracking(cache_dir(), os.environ.get("MLFLOW_TRACKING_URI", ""), os.environ.get("MLFLOW_EXPERIMENT_NAME", "qlora-cli"))


def cache_dir() -> Path:
    """Downloads, embedded models and the default MLflow store: $QLORA_CACHE, else ~/.cache/qlora-pipeline."""
    return Path(os.environ.get("QLORA_CACHE") or Path.home() / ".cache" / "qlora-pipeline")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        conf = find_config_dir(_option(argv, "--config-dir"))
    except UsageError:
        conf = None  # --help still works; commands that need conf/ say so
    parser = build_parser(conf)
    args, extra = parser.parse_known_args(argv)  # overrides may follow options: `quantize M --out D quant=fp4`
    unknown = [e for e in extra if e.startswith("-") or not hasattr(args, "overrides") and not hasattr(args, "args")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    for name in ("overrides", "args"):
        if hasattr(args, name):
            setattr(args, name, [*getattr(args, name), *extra])
    from qlora.cli import commands

    if getattr(args, "quiet", False):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # transformers' own bars (loading weights) too
    try:
        return getattr(commands, f"cmd_{args.command}")(args)
    except UsageError as e:
        print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError) as e:  # ConfigError, BadFileError: ValueErrors
        print(f"{PROG} {args.command}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted (a finetune resumes when run again)", file=sys.stderr)
        return 130


def _option(argv: list[str], name: str) -> str | None:
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


if __name__ == "__main__":
    raise SystemExit(main())
