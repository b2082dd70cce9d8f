"""Fixtures shared by the test files: the real sample dataset, built once per session."""

import pytest

from utils.tools.sample_data import ensure_sample_data


@pytest.fixture(scope="session")
def sample_data():
    """The sample dataset's TFRecord folder (600 + 200 real 64x64 images, 10 classes),
    built through the converter on first use and cached in .cache/."""
    return ensure_sample_data()
