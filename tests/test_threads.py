"""How many torch threads ICG captions with inside the WebUI (``icg.threads``)."""

from __future__ import annotations

import pytest
import torch

from icg.threads import caption_threads, limited_threads


@pytest.mark.parametrize(
    ("setting", "available", "expected"),
    [
        (0, 8, 7),  # auto: all but one core
        (0, 4, 3),
        (0, 3, 3),  # below four threads the cap would cost a third or half of the speed: none
        (0, 2, 2),
        (0, 1, 1),
        (None, 4, 3),
        (3, 8, 3),  # the setting
        (16, 8, 8),  # at most what the host runs with
        (-2, 8, 7),
        (0, 0, 1),
    ],
)
def test_caption_threads(setting, available, expected):
    assert caption_threads(setting, available) == expected


@pytest.fixture
def four_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("four_threads")
def test_limited_threads_sets_the_count_and_restores_it_even_after_an_error():
    with limited_threads(2) as count:
        assert count == 2 and torch.get_num_threads() == 2
    assert torch.get_num_threads() == 4
    with pytest.raises(RuntimeError), limited_threads(1):
        raise RuntimeError("a failed job")
    assert torch.get_num_threads() == 4


@pytest.mark.usefixtures("four_threads")
def test_limited_threads_never_raises_the_count():
    with limited_threads(16) as count:
        assert count == 4 and torch.get_num_threads() == 4
    assert torch.get_num_threads() == 4
