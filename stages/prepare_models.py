"""DVC stage `prepare_models`: the causal and encoder base models as plain safetensors folders."""

from stage_io import ARTIFACTS, pipeline_params

from qlora.models.sources import materialise


def main() -> None:
    cfg = pipeline_params()
    materialise(cfg.causal, ARTIFACTS / "models" / "causal")
    materialise(cfg.encoder, ARTIFACTS / "models" / "encoder")


if __name__ == "__main__":
    main()
