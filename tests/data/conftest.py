"""Session-scoped embedded assets: the BIG-bench sdist (downloaded once into a user cache) and its tasks."""

from pathlib import Path

import pytest

ASSET_CACHE = Path.home() / ".cache" / "qlora-assets"


@pytest.fixture(scope="session")
def bigbench_sdist() -> Path:
    from qlora.data.bigbench import download_sdist

    return download_sdist(ASSET_CACHE)  # a no-op when already cached; ~45 s otherwise


@pytest.fixture(scope="session")
def bigbench_tasks(bigbench_sdist, tmp_path_factory) -> Path:
    from qlora.data.bigbench import extract_tasks

    return extract_tasks(bigbench_sdist, tmp_path_factory.mktemp("bigbench") / "tasks")
