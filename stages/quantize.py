"""DVC stage `quantize@<name>`: the causal base quantized to one data type of the ablation.

usage: python stages/quantize.py <quant name>   (a key of `quants` in params.yaml, or `main` for `quant`)
"""

import sys

from stage_io import ARTIFACTS, pipeline_params

from qlora.models.loading import quantize_checkpoint


def main(name: str) -> None:
    cfg = pipeline_params()
    quant = cfg.quant if name == "main" else cfg.quant_named(name)
    quantize_checkpoint(ARTIFACTS / "models" / "causal", cfg.causal.kind, quant, ARTIFACTS / "quantized" / name)


if __name__ == "__main__":
    main(sys.argv[1])
