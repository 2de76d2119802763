import pytest
import torch

from pipeline import ingest
from pipeline.split import split


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Downloads and caches go to a temporary folder, never ~/.cache."""
    monkeypatch.setenv("PIPELINE_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def small_ratings():
    """600 users x 300 items, 30k ratings, rank 4, noise 0.25."""
    return ingest.synthetic(600, 300, 30_000, rank=4, noise=0.25, seed=1)


@pytest.fixture(scope="session")
def small_split(small_ratings):
    return split(small_ratings, seed=0)


@pytest.fixture(scope="session")
def ml100k():
    return ingest.load("ml-100k")


@pytest.fixture
def cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return torch.device("cuda")
