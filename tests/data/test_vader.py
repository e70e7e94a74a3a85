import collections

import pytest

from qlora.data.vader import VaderLabels, load_vader, read_ground_truth


def test_rows_and_labels_on_fixture(vader_sdist):
    rows = read_ground_truth(vader_sdist)
    assert len(rows) == 10 and rows[0] == ("amazon reviews", 1.0, "works as described")  # files in name order, CRLF stripped
    binary = load_vader(vader_sdist)
    assert binary.task == "vader_binary" and binary.labels == ("negative", "positive")
    # +-0.5 are kept (>= / <=), |v| < 0.5 (0.1, 0.0, -0.49) left out
    assert [(e.text, e.label) for e in binary.examples] == [
        ("works as described", 1), ("a dull film", 0), ("a triumph", 1), ("tedious and long", 0),
        ("I love this so much", 1), ("worst day ever", 0), ("fine, good enough", 1)]  # fmt: skip
    three = load_vader(vader_sdist, VaderLabels.THREE_WAY)
    assert three.labels == ("negative", "neutral", "positive") and len(three.examples) == 10
    assert collections.Counter(e.label for e in three.examples) == {0: 3, 1: 3, 2: 4}
    assert {e.group for e in three.examples} == {"amazon reviews", "movie reviews", "nyt editorials", "tweets"}


def test_errors(tmp_path):
    from tests.data.conftest import write_vader_sdist

    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_ground_truth(tmp_path / "missing.tar.gz")
    bad = write_vader_sdist(tmp_path / "bad.tar.gz", {"tweets": [(1, "a\tb")], "movieReviewSnippets": [], "nytEditorialSnippets": [],
                                                       "amazonReviewSnippets": []})  # fmt: skip
    with pytest.raises(ValueError, match=r"tweets_GroundTruth.txt: line 1: expected 'id<TAB>valence<TAB>text'"):
        read_ground_truth(bad)


@pytest.mark.slow
def test_real_sdist(real_assets):
    from qlora.data.assets import VADER_SDIST, asset_path

    sdist = asset_path(VADER_SDIST, real_assets)
    rows = read_ground_truth(sdist)
    assert len(rows) == 23703
    assert collections.Counter(g for g, _, _ in rows) == {"movie reviews": 10605, "nyt editorials": 5190, "tweets": 4200, "amazon reviews": 3708}
    binary = load_vader(sdist)
    assert collections.Counter(e.label for e in binary.examples) == {1: 10278, 0: 9181}
    assert collections.Counter(e.label for e in load_vader(sdist, VaderLabels.THREE_WAY).examples) == {2: 10278, 0: 9181, 1: 4244}
