"""Human-rated sentiment sentences from the `vadersentiment==3.3.2` sdist: the embedded classification task.

Hutto, C.J. & Gilbert, E.E. (2014). VADER: A Parsimonious Rule-based Model for Sentiment Analysis of
Social Media Text. ICWSM-14. (MIT licence.) The sdist's `additional_resources/hutto_ICWSM_2014.tar.gz`
(a tar inside the tar; the wheel leaves it out) holds four `*_GroundTruth.txt` files, tab-separated
`id, mean valence (-4..4) of about 20 raters, text`: 23,703 English sentences — movie-review snippets
10,605, New York Times editorial snippets 5,190, tweets 4,200, Amazon review snippets 3,708.

Labels from the mean valence (the rule is stated in every report that uses them):
- BINARY (the default; SST-2-like, the paper's GLUE column has SST-2): positive >= +0.5, negative <=
  -0.5, the rest (|valence| < 0.5, 4,244 sentences) left out: 10,278 positive / 9,181 negative;
- THREE_WAY: the same thresholds with a neutral class in between.
"""

from __future__ import annotations

import enum
import io
import tarfile
from pathlib import Path

from qlora.data.examples import ClassificationData, ClassificationExample

_INNER = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
GROUPS = {  # file prefix -> group name
    "amazonReviewSnippets": "amazon reviews",
    "movieReviewSnippets": "movie reviews",
    "nytEditorialSnippets": "nyt editorials",
    "tweets": "tweets",
}
THRESHOLD = 0.5  # |mean valence| below it is neutral


class VaderLabels(enum.Enum):
    BINARY = ("negative", "positive")
    THREE_WAY = ("negative", "neutral", "positive")


def _label(valence: float, labels: VaderLabels) -> int | None:
    if valence >= THRESHOLD:
        return labels.value.index("positive")
    if valence <= -THRESHOLD:
        return labels.value.index("negative")
    return None if labels is VaderLabels.BINARY else labels.value.index("neutral")


def read_ground_truth(sdist: str | Path) -> list[tuple[str, float, str]]:
    """(group, mean valence, text) for every rated sentence, files in name order, lines in file order.

    Raises:
        FileNotFoundError: the sdist or its inner archive is missing.
        ValueError: a line that is not `id<TAB>valence<TAB>text` (names the file and line).
    """
    sdist = Path(sdist)
    if not sdist.is_file():
        raise FileNotFoundError(f"VADER sdist {sdist} does not exist")
    with tarfile.open(sdist, "r:gz") as outer:
        try:
            inner_bytes = outer.extractfile(_INNER).read()
        except KeyError:
            raise FileNotFoundError(f"{sdist} has no {_INNER}") from None
    rows = []
    with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:gz") as inner:
        members = sorted((m for m in inner.getmembers() if m.name.endswith("_GroundTruth.txt")), key=lambda m: m.name)
        if len(members) != len(GROUPS):
            raise ValueError(f"{sdist}: expected {len(GROUPS)} *_GroundTruth.txt files, found {[m.name for m in members]}")
        for m in members:
            group = GROUPS[Path(m.name).name.removesuffix("_GroundTruth.txt")]
            text = inner.extractfile(m).read().decode("utf-8")
            for i, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                parts = line.split("\t")
                if len(parts) != 3:
                    raise ValueError(f"{m.name}: line {i}: expected 'id<TAB>valence<TAB>text', got {line[:80]!r}")
                rows.append((group, float(parts[1]), parts[2].strip()))
    return rows


def load_vader(sdist: str | Path, labels: VaderLabels = VaderLabels.BINARY) -> ClassificationData:
    """The rated sentences as a classification task (`vader_binary` or `vader_3way`), in file order."""
    examples = []
    for group, valence, text in read_ground_truth(sdist):
        label = _label(valence, labels)
        if label is not None:
            examples.append(ClassificationExample(text=text, label=label, group=group))
    name = "vader_binary" if labels is VaderLabels.BINARY else "vader_3way"
    return ClassificationData(task=name, labels=labels.value, examples=examples)
