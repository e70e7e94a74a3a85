"""The fingerprint that keys a resumable training run to its exact inputs."""

from qlora.pipeline.finetune import fingerprint


def test_fingerprint_changes_with_any_byte_or_name(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "a.bin").write_bytes(b"\x00" * 10)
    (model / "config.json").write_text("{}")
    data = tmp_path / "train.safetensors"
    data.write_bytes(b"tokens")
    base = fingerprint(model, data)
    assert fingerprint(model, data) == base and len(base) == 64
    data.write_bytes(b"tokenz")
    assert fingerprint(model, data) != base
    data.write_bytes(b"tokens")
    (model / "a.bin").write_bytes(b"\x00" * 9 + b"\x01")
    assert fingerprint(model, data) != base
    (model / "a.bin").write_bytes(b"\x00" * 10)
    (model / "a.bin").rename(model / "b.bin")
    assert fingerprint(model, data) != base
