"""qlora: QLoRA fine-tuning in 4 bits (Dettmers et al., 2023, arXiv:2305.14314).

The public names below are imported on first use (PEP 562), so `import qlora.quant` or a pipeline
stage loads only the modules it needs (tests/pipeline/test_dvc_contract.py relies on this to keep each
DVC stage's code dependencies small and exact).
"""

from qlora._lazy import attach

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "Backend": "qlora.quant.api",
    "Checkpointing": "qlora.config",
    "ComputeDtype": "qlora.config",
    "CodedScales": "qlora.quant.state",
    "DataType": "qlora.quant.dtypes",
    "DoubleQuant": "qlora.quant.dtypes",
    "GGUFType": "qlora.models.gguf_export",
    "LoRAConfig": "qlora.config",
    "ModelReport": "qlora.models.surgery",
    "NestedAbsmax": "qlora.quant.state",
    "QLoRALinear": "qlora.nn.linear",
    "QuantConfig": "qlora.config",
    "QuantizedTensor": "qlora.quant.state",
    "ScaleFormat": "qlora.quant.dtypes",
    "Save": "qlora.models.saving",
    "SurgeryConfig": "qlora.config",
    "Targets": "qlora.config",
    "bits_per_param": "qlora.quant.dtypes",
    "dequantize": "qlora.quant.api",
    "export_gguf": "qlora.models.gguf_export",
    "from_pretrained": "qlora.data.embedded",  # qlora.models.pretrained's, + embedded models by name
    "merge_and_unload": "qlora.models.surgery",
    "merge_model": "qlora.models.surgery",
    "model_dir": "qlora.data.embedded",
    "model_report": "qlora.models.surgery",
    "prepare_model": "qlora.models.surgery",
    "quantize": "qlora.quant.api",
    "save_pretrained": "qlora.models.saving",
}
__all__ = sorted(_LAZY)
__getattr__, __dir__ = attach(__name__, _LAZY)
