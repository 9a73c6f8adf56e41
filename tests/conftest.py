"""Fixtures shared by the test modules."""
import pytest
import torch


@pytest.fixture
def float64_by_default():
    """torch's default dtype float64 for one test, and back after it: set at import instead, it
    would hold for every module of the session (pytest imports them all before running any)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
