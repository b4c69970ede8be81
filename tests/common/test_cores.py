"""torch's thread count: one context manager sets it for a block and always gives it back."""

from __future__ import annotations

import pytest
import torch

from apmae.common.cores import torch_threads, usable_cores
from apmae.lit_models.training import hold_threads, release_threads


@pytest.fixture(autouse=True)
def three_threads():
    with torch_threads(3):  # what the first test checks: a block's count, and the one before it back after
        yield


def test_the_block_runs_on_its_threads_and_the_count_comes_back_even_after_an_error():
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 3
    with pytest.raises(RuntimeError), torch_threads(2):
        raise RuntimeError("inside")
    assert torch.get_num_threads() == 3
    with torch_threads(None):  # None leaves the count alone
        assert torch.get_num_threads() == 3
    with pytest.raises(ValueError, match="at least 1"), torch_threads(0):
        pass
    assert usable_cores() >= 1


def test_a_module_holds_its_threads_from_setup_to_teardown_once():
    class Module:
        pass

    module = Module()
    hold_threads(module, 1)
    hold_threads(module, 2)  # a second setup (fit, then test) keeps the first hold
    assert torch.get_num_threads() == 1
    release_threads(module)
    assert torch.get_num_threads() == 3
    release_threads(module)  # nothing held: nothing changes
    hold_threads(module, None)
    assert torch.get_num_threads() == 3 and getattr(module, "_held_threads", None) is None
