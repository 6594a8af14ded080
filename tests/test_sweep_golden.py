"""The verification sweep's outputs, byte for byte, against a golden recorded before issue 28's refactor.

A small sweep on the shipped organism (one candidate, two alphas, two betas, controls on the whole
grid, ablation and projection on the fine-tune, strength chosen by the interval) writes its record;
the record file, the settings table, the summary and the dose-response table must equal the files in
``tests/golden/`` exactly. Regenerate them only for a change that is meant to change results:
``TL_PERSONA_WRITE_GOLDEN=1 pytest tests/test_sweep_golden.py``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tl_persona import organism
from tl_persona.verify import Execution, Sampling, Sweep, verify_latents

GOLDEN = Path(__file__).parent / "golden"
LATENT = 919  # the shipped organism's toxic-persona latent (the quick demo's pick)


def _sweep(record: Path):
    org = organism.load()
    other = [p for d, ps in org.eval_prompts.items() if d != org.trained_domain for p in ps]
    prompts = random.Random(0).sample(other, 12)
    return verify_latents(
        org.base, org.misaligned, org.sae, [LATENT], prompts, org.judge,
        sweep=Sweep(alphas=(40.0, 50.0), betas=(10.0, 20.0), n_controls=2, choose_by="upper", controls_at="grid",
                    suppress=("ablate", "project_out")),
        sampling=Sampling(n_samples=2, max_new_tokens=8, positions="prompt", seed=0, batch_size=96, n_boot=50),
        execution=Execution(record=record))


def test_sweep_record_and_tables_are_byte_identical_to_the_golden(tmp_path):
    v = _sweep(tmp_path / "record.jsonl")
    got = {
        "record.jsonl": (tmp_path / "record.jsonl").read_text(),
        "table.csv": v.table().to_csv(index=False),
        "summary.csv": v.summary().to_csv(index=False),
        "dose_response.csv": v.dose_response().to_csv(index=False),
    }
    if os.environ.get("TL_PERSONA_WRITE_GOLDEN") == "1":
        for name, text in got.items():
            (GOLDEN / f"sweep_{name}").write_text(text)
        pytest.skip("golden files written")
    for name, text in got.items():
        want = (GOLDEN / f"sweep_{name}").read_text()
        assert text == want, f"{name} differs from tests/golden/sweep_{name}"
