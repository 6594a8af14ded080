"""Threads for the work's size: one for small models, the user's choice always kept, restored after."""

from __future__ import annotations

import pytest
import torch

from tl_persona import threads


@pytest.fixture
def two_threads(monkeypatch):
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.setattr(threads, "_AT_IMPORT", 2)  # as if torch's default were 2 when tl_persona loaded
    for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(v, raising=False)
    yield
    torch.set_num_threads(prev)


def test_small_models_run_on_one_thread_and_the_count_is_restored(two_threads):
    assert threads.threads_for(128) == 1 and threads.threads_for(768) == 2
    assert not threads.user_chose_threads()
    with threads.threads_for_width(128) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with threads.threads_for_width(768) as n:
        assert n == 2 and torch.get_num_threads() == 2
    with pytest.raises(RuntimeError), threads.threads_for_width(64):
        raise RuntimeError("the body failed")
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("how", ["OMP_NUM_THREADS", "MKL_NUM_THREADS", "torch.set_num_threads"])
def test_the_users_choice_is_kept(two_threads, monkeypatch, how):
    if how == "torch.set_num_threads":
        torch.set_num_threads(3)
    else:
        monkeypatch.setenv(how, "2")
    before = torch.get_num_threads()
    assert threads.user_chose_threads()
    with threads.threads_for_width(128) as n:
        assert n == before == torch.get_num_threads()
    assert torch.get_num_threads() == before
