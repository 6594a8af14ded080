"""Shared fixtures: tiny models built from configs (no downloads) and SAE-Lens SAEs from config classes."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

from tl_persona import testing  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny models (``pytestmark = pytest.mark.usefixtures("one_thread")``): they gain
    nothing from threads, and on shared, busy cores two threads spin-wait on each other (about 10x
    slower per op); both sides of every comparison in such a module run at the same setting."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_word_tokenizer():
    return testing.word_tokenizer()


@pytest.fixture(scope="session")
def hooked_model(tiny_word_tokenizer):
    return testing.tiny_hooked_transformer(tiny_word_tokenizer)


@pytest.fixture(scope="session")
def bridge_model(tmp_path_factory, tiny_word_tokenizer):
    return testing.tiny_bridge(tmp_path_factory.mktemp("tiny_gpt2"), tiny_word_tokenizer)


@pytest.fixture(params=["hooked", "bridge"])
def model(request, hooked_model, bridge_model):
    return hooked_model if request.param == "hooked" else bridge_model


@pytest.fixture(params=["standard", "topk", "jumprelu"])
def sae(request):
    return testing.tiny_sae(request.param, d_in=32, d_sae=64, hook_name="blocks.1.hook_resid_pre")
