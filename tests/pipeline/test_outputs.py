"""qlora.pipeline.outputs on its own: markers, the recognised previous outputs, and results files."""

from __future__ import annotations

import json

import pytest

from qlora.pipeline.outputs import MARKER, Inputs, OutputKind, OutputRefused, check_file_output, check_folder_output, mark_output, output_kind
from qlora.pipeline.user_eval import is_results_file


def test_a_marker_names_the_command_and_only_that_command_may_replace_the_folder(tmp_path):
    out = tmp_path / "q"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"x")
    assert output_kind(out) is None
    mark_output(out, OutputKind.QUANTIZED)
    assert json.loads((out / MARKER).read_text()) == {"command": "qlora quantize", "format": 1}
    assert output_kind(out) is OutputKind.QUANTIZED
    assert check_folder_output(out, OutputKind.QUANTIZED, Inputs(), overwrite=False) == out
    with pytest.raises(OutputRefused, match=r"holds a `qlora quantize` output, not a `qlora merge` one; pass --overwrite"):
        check_folder_output(out, OutputKind.MERGED, Inputs(), overwrite=False)
    (out / MARKER).write_text("{not json")  # a damaged marker is no marker
    assert output_kind(out) is None
    with pytest.raises(OutputRefused, match=r"a folder that `qlora quantize` did not write \(model.safetensors, qlora_output.json\)"):
        check_folder_output(out, OutputKind.QUANTIZED, Inputs(), overwrite=False)


def test_empty_new_and_overwritten_folders_are_allowed_inputs_never(tmp_path):
    (tmp_path / "empty").mkdir()
    assert check_folder_output(tmp_path / "empty", OutputKind.ADAPTER, Inputs(), overwrite=False)
    assert check_folder_output(tmp_path / "new" / "deeper", OutputKind.ADAPTER, Inputs(), overwrite=False)
    data = tmp_path / "d" / "my.jsonl"
    data.parent.mkdir()
    data.write_text("{}\n")
    inputs = Inputs([("data", data), ("hub id", "org/name"), ("nothing", None)])
    assert [w for w, _ in inputs.items] == ["data"]  # only what exists here
    for out in (data, data / "x", tmp_path / "d", tmp_path):
        with pytest.raises(OutputRefused, match=r"(is|lies inside|holds) the data"):
            check_folder_output(out, OutputKind.ADAPTER, inputs, overwrite=True)


def test_results_files_are_recognised_by_their_whole_shape(tmp_path):
    good = {"mmlu": {"value": 0.25, "n": 4, "ci_low": 0.0, "ci_high": 0.7}, "rougeL": {"value": 0.1, "n": 2, "ci_low": None, "ci_high": None}}
    cases = {"good.json": json.dumps(good), "empty.json": "{}", "list.json": "[1]", "other.json": json.dumps({"mmlu": {"value": 1}}),
             "foreign.json": json.dumps({"accuracy": good["mmlu"]}), "broken.json": "{", "data.jsonl": '{"instruction": "a"}\n'}  # fmt: skip
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
    assert [n for n in cases if is_results_file(tmp_path / n)] == ["good.json"]
    assert check_file_output(tmp_path / "good.json", "results file", is_results_file, Inputs(), overwrite=False, option="--json")
    with pytest.raises(OutputRefused, match=r"--json .*other.json: a file that is not a previous results file; pass --overwrite"):
        check_file_output(tmp_path / "other.json", "results file", is_results_file, Inputs(), overwrite=False, option="--json")
    assert check_file_output(tmp_path / "other.json", "results file", is_results_file, Inputs(), overwrite=True, option="--json")
    with pytest.raises(OutputRefused, match=r"is a folder; expected a results file path"):
        check_file_output(tmp_path, "results file", is_results_file, Inputs(), overwrite=True, option="--json")
