"""The paper on a real model: SmolLM2-135M-Instruct, its SAE, its fine-tunes and the pipeline behind ``tl-persona demo --model smollm2``."""
