"""Small stand-ins for the pinned data files (the evals wheel, the VADER sdist), built in the same layout, and
the real ones where set-up fetched them."""

import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest

from qlora.data.assets import EVALS_WHEEL, VADER_SDIST, default_assets_dir

LICENSE_MD = """MIT License ...

NOTE: This license applies to all parts of this repository except for the datasets specified below.

#### Theory of Mind
- **Location**: evals/registry/data/theory_of_mind
    - **License**: Creative Commons Attribution-NonCommercial 4.0 International
"""

# task -> (system message or None, user template, reference template); families: colour (2 tasks), count, ...
FIXTURE_TASKS = {
    "colour_names": ("Name the colour that is described in the sentence.", "The sky on a clear day is the colour of item {i}.", "blue {i}"),
    "colour-mixing": ("Say which colour you get when the two are mixed.", "What is the mix of red and yellow for item {i}?", "orange {i}"),
    "count_words": (None, "Count the words in this sentence that is number {i} of the set.", "{i}"),
    "capital_cities": ("Answer with the capital city of the country.", "What is the capital of the country in question {i}?", "Paris {i}"),
    "theory_of_mind": ("Answer the question about the story.", "Where does the girl think that the ball is in story {i}?", "basket"),
    "tiny_task": ("Answer it.", "This is the question of the tiny task {i}.", "yes"),  # too few records
    "francais": ("Traduisez la phrase en anglais.", "Où est la bibliothèque {i} ?", "Where is the library {i}?"),
}


def _records(task: str, n: int) -> list[dict]:
    system, user, ref = FIXTURE_TASKS[task]
    out = []
    for i in range(n):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user.format(i=i)}]
        out.append({"input": messages, "ideal": [ref.format(i=i), "other"] if i % 2 else ref.format(i=i)})
    return out


def write_evals_wheel(path: Path, per_task: int = 60) -> Path:
    """A zip in the evals wheel's layout: LICENSE.md, task folders, a few_shot file, records the rules drop."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evals-3.0.1.post1.dist-info/LICENSE.md", LICENSE_MD)
        for task in FIXTURE_TASKS:
            n = 10 if task == "tiny_task" else per_task
            lines = [json.dumps(r) for r in _records(task, n)]
            if task == "count_words":  # skipped: multi-turn, named few-shot turns, no reference, bad JSON
                lines += [json.dumps({"input": [{"role": "system", "content": "x"}, {"role": "user", "content": "a"},
                                                {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}], "ideal": "d"}),
                          json.dumps({"input": [{"role": "system", "content": "x", "name": "example_user"}], "ideal": "d"}),
                          json.dumps({"input": [{"role": "user", "content": "q"}], "ideal": ""}), "{not json"]  # fmt: skip
            z.writestr(f"evals/registry/data/{task}/samples.jsonl", "\r\n".join(lines) + "\r\n")
        z.writestr("evals/registry/data/colour_names/few_shot.jsonl", json.dumps(_records("colour_names", 1)[0]) + "\n")
        sarcasm = [{"input": [{"role": "system", "content": "Respond with 1 or 0"}, {"role": "user", "content": f"headline {i}"}],
                    "ideal": str(i % 2)} for i in range(6)]  # fmt: skip
        z.writestr("evals/registry/data/sarcasm/samples.jsonl", "\n".join(json.dumps(r) for r in sarcasm) + "\n")
    return path


VADER_ROWS = {  # file prefix -> [(valence, text)]
    "tweets": [(2.5, "I love this so much"), (-1.2, "worst day ever"), (0.1, "it is a day"), (0.5, "fine, good enough")],
    "movieReviewSnippets": [(-0.5, "a dull film"), (3.1, "a triumph"), (-2.0, "tedious and long")],
    "nytEditorialSnippets": [(0.0, "The council meets on Tuesday.")],
    "amazonReviewSnippets": [(1.0, "works as described"), (-0.49, "arrived late")],
}


def write_vader_sdist(path: Path, rows: dict = VADER_ROWS) -> Path:
    """A tar.gz holding additional_resources/hutto_ICWSM_2014.tar.gz with the four GroundTruth files (CRLF)."""
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as t:
        for prefix, items in rows.items():
            data = "".join(f"{i + 1}\t{v}\t{text}\r\n" for i, (v, text) in enumerate(items)).encode()
            info = tarfile.TarInfo(f"hutto_ICWSM_2014/{prefix}_GroundTruth.txt")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    data = inner.getvalue()
    with tarfile.open(path, "w:gz") as t:
        info = tarfile.TarInfo("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def evals_wheel(tmp_path) -> Path:
    return write_evals_wheel(tmp_path / "evals.whl")


@pytest.fixture
def vader_sdist(tmp_path) -> Path:
    return write_vader_sdist(tmp_path / "vader.tar.gz")


@pytest.fixture(scope="session")
def real_assets() -> Path:
    """The folder where set-up put the pinned data files (CI runs set-up first)."""
    folder = default_assets_dir()
    missing = [a.filename for a in (EVALS_WHEEL, VADER_SDIST) if not (folder / a.filename).is_file()]
    assert not missing, f"{missing} missing from {folder}: run `bash scripts/setup.sh`"
    return folder
