"""The intervention registry: every kind of intervention that verification, the CLI and reports know.

A kind is one small function from a :class:`Target` (where and along what) and a strength to a
plain ``fwd_hooks`` list, plus a few facts (does it take a strength, does it need SAE latents, can
one ``generate`` call run a different setting per batch row). :func:`tl_persona.verify.verify_latents`
runs the kinds named in its ``suppress`` setting on the fine-tuned model (a kind that takes a
strength over its own grid of strengths), the CLI and the run config offer :func:`names`, and the
report adds columns per kind. A new kind is one file: a function and one :func:`register` call
(``tl_persona/interventions/capping.py`` is the worked example)::

    from tl_persona import interventions as I, hooks as H

    I.register(I.Kind("flip", lambda t, s: H.steer(t.hook_name, -2 * t.direction, 1.0, positions=t.positions),
                      column="flipped", description="reflect the stream along the direction"))

Built in: ``none`` (:data:`UNMODIFIED`), ``steer`` (:data:`STEERING`), ``ablate``, ``project_out``
(:mod:`~tl_persona.interventions.builtin`) and ``cap`` (:mod:`~tl_persona.interventions.capping`).
"""

from tl_persona.interventions.builtin import ABLATION, PROJECTION, STEERING, UNMODIFIED
from tl_persona.interventions.capping import CAPPING
from tl_persona.interventions.registry import INTERVENTIONS, Kind, Target, get, names, register

__all__ = ["Target", "Kind", "register", "get", "names", "INTERVENTIONS", "UNMODIFIED", "STEERING", "ABLATION",
           "PROJECTION", "CAPPING"]
