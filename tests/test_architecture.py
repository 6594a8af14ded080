"""The two extension points (an encoder, an intervention kind), the token vocabulary and the layering.

Worked examples from docs/architecture.md: a toy encoder that projects on two directions diffs through
the same engine as an SAE; a toy intervention kind verifies through the registry. Plus the rules of
the layer diagram, read from the source: the core imports nothing above it, no module imports the
package root, and the library core never imports the organism.
"""

from __future__ import annotations

import ast
import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from tl_persona import hooks as H
from tl_persona import interventions as I
from tl_persona import testing
from tl_persona.data import PromptSet
from tl_persona.evals.judges import Judgement
from tl_persona.diff import diff_latents
from tl_persona.directions import Projection
from tl_persona.tokens import SELECTIONS, check_selection, count_selected, select
from tl_persona.validate import BadInput

HOOK = "blocks.1.hook_resid_pre"
PKG = Path(__file__).resolve().parents[1] / "tl_persona"


def _prompts(n=12):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        q = " ".join(f"w{rng.integers(90)}" for _ in range(1 + i % 5))
        a = " ".join(f"w{rng.integers(90)}" for _ in range(1 + (i * 7) % 6))
        out.append([{"role": "user", "content": q}, {"role": "assistant", "content": a}])
    return out


def _shifted(model, direction, alpha):
    ft = copy.deepcopy(model)
    with torch.no_grad():
        ft.blocks[0].mlp.b_out += alpha * direction
    return ft


class TwoDirections:
    """The toy encoder of docs/architecture.md: the projections on two fixed directions."""

    def __init__(self, u, v, hook_name):
        self.U = torch.stack([u, v])
        self.hook_name, self.d_in, self.n_features = hook_name, u.shape[0], 2
        self.device = torch.device("cpu")

    def encode(self, x):
        return x.float() @ self.U.T

    def identity(self):
        return {"class": "TwoDirections"}


def _brute_means(model, prompts, U, scope):
    tp = PromptSet.from_list(prompts).tokenize(model)
    pb = tp.make_batch(np.arange(len(tp)))
    acts = model.run_with_cache(pb.tokens, names_filter=HOOK)[1][HOOK]
    x = acts[pb.mask(scope)].double()
    return (x @ U.double().T).mean(0)


def test_toy_encoder_diffs_through_the_engine(hooked_model):
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(32, generator=g), torch.randn(32, generator=g)
    ft = _shifted(hooked_model, u / u.norm(), 3.0)
    prompts = _prompts()
    toy = TwoDirections(u, v, HOOK)
    d = diff_latents(hooked_model, ft, toy, prompts, scope="response", batch_size=3, per_prompt_top=1)
    want = _brute_means(ft, prompts, toy.U, "response") - _brute_means(hooked_model, prompts, toy.U, "response")
    torch.testing.assert_close(d.delta, want, rtol=1e-5, atol=1e-5)
    assert int(d.rank("increase")[0]) == 0  # the direction the fine-tune moved along
    assert d.meta["sae"] == {"class": "TwoDirections"}
    ci = d.bootstrap_ci(0, n_boot=200)
    assert ci.lo <= ci.delta <= ci.hi
    # the shipped Projection encoder gives the same numbers (it normalises the directions)
    p = diff_latents(hooked_model, ft, Projection({"u": u, "v": v}, HOOK, normalize=False), prompts,
                     scope="response", batch_size=5, per_prompt_top=1)
    torch.testing.assert_close(p.delta, d.delta, rtol=1e-5, atol=1e-6)


def test_one_model_at_a_time_equals_the_joint_pass(hooked_model, sae):
    ft = _shifted(hooked_model, sae.W_dec[5].detach(), 2.0)
    prompts = _prompts(20)
    a = diff_latents(hooked_model, ft, sae, prompts, scope="all", batch_size=4, per_prompt_top=4)
    b = diff_latents(hooked_model, ft, sae, prompts, scope="all", batch_size=4, per_prompt_top=4,
                     one_model_at_a_time=True, device="cpu")
    assert torch.equal(a.delta, b.delta) and torch.equal(a.base.m2, b.base.m2)
    assert torch.equal(a.per_prompt.latents, b.per_prompt.latents)
    assert torch.equal(a.per_prompt.finetuned_sums, b.per_prompt.finetuned_sums)
    assert b.meta["one_model_at_a_time"] and not a.meta["one_model_at_a_time"]
    assert H.hooks_attached(hooked_model) == [] and H.hooks_attached(ft) == []


def test_toy_intervention_kind_verifies_through_the_registry(monkeypatch):
    from test_verify import TokenJudge, planted_pair

    calls = []

    def flip(t, strength):
        calls.append(t.hook_name)
        return H.steer(t.hook_name, -2.0 * t.direction, 40.0, positions="all")

    monkeypatch.setitem(I.INTERVENTIONS, "flip", I.Kind("flip", flip, column="flipped"))
    tok = testing.word_tokenizer()
    base, ft, u = planted_pair(tok)
    s = testing.tiny_sae("standard", d_in=32, d_sae=64, hook_name="blocks.2.hook_resid_pre")
    with torch.no_grad():
        s.W_dec[7] = u
    prompts = [[{"role": "user", "content": f"w{i} w{i + 1}"}] for i in range(1, 7)]
    from tl_persona.verify import Sampling, Sweep, verify_latents

    def push(t, strength):  # a kind with a strength, and no per-row builder: one generate call per setting
        return H.steer(t.hook_name, t.direction, -strength, positions="all")

    monkeypatch.setitem(I.INTERVENTIONS, "push", I.Kind("push", push, uses_strength=True, column="pushed"))
    v = verify_latents(base, ft, s, [7], prompts, TokenJudge(),
                       sweep=Sweep(alphas=(50.0,), n_controls=1, suppress=("ablate", "flip", "push"),
                                   strengths={"push": (0.0, 60.0)}),
                       sampling=Sampling(n_samples=2, max_new_tokens=3, positions="all", n_boot=50))
    row = v.summary().iloc[0]
    assert calls == ["blocks.2.hook_resid_pre"]
    assert "finetuned_flipped" in row and "finetuned_ablated" in row
    assert row["finetuned_flipped"] < row["finetuned"]  # reflecting the planted direction removes it
    assert row["pushed_strength"] == 60.0 and row["finetuned_pushed"] < row["finetuned"]
    assert set(v.table()["kind"]) == {"none", "steer", "ablate", "flip", "push"}
    with pytest.raises(BadInput, match="not registered"):
        Sweep(suppress=("flop",))


def test_no_kind_name_is_written_where_the_registry_is_read():
    """Verification, the run config, the demo and the CLI's verify command read kinds from the
    registry (I.UNMODIFIED, Sweep.induce, the kinds' column words): no string in them is a kind's name."""
    kinds = set(I.names())
    where = [*sorted((PKG / "verify").glob("*.py")), PKG / "run.py", PKG / "demo.py"]
    found = [f"{p.relative_to(PKG.parent)}:{n.lineno} {n.value!r}" for p in where for n in ast.walk(ast.parse(p.read_text()))
             if isinstance(n, ast.Constant) and n.value in kinds]
    cli = ast.parse((PKG / "cli.py").read_text())
    verify_funcs = [f for f in cli.body if isinstance(f, ast.FunctionDef)
                    and f.name in ("_add_verify_command", "_suppress_choices", "_sweep", "cmd_verify", "_judge")]
    assert len(verify_funcs) == 5
    found += [f"cli.py:{n.lineno} {n.value!r}" for f in verify_funcs for n in ast.walk(f)
              if isinstance(n, ast.Constant) and n.value in kinds]
    assert not found, f"kind names written out instead of read from the registry: {found}"


def test_registry_errors():
    with pytest.raises(BadInput, match="already registered"):
        I.register(I.Kind("steer", lambda t, s: []))
    with pytest.raises(BadInput, match="did you mean 'ablate'"):
        I.get("ablat")
    assert {"none", "steer", "ablate", "project_out"} <= set(I.names())
    assert "steer" not in I.names(uses_strength=False)


class KeywordJudge:
    """The worked judge of docs/architecture.md: an answer is misaligned when it says a word."""

    calls = 0

    def __init__(self, model: str = "bad"):  # the word, given as --judge-model / judge.model
        self.word = model

    def judge(self, items):
        KeywordJudge.calls += len(items)
        return [Judgement(aligned=0.0 if self.word in it.answer.split() else 100.0, coherent=100.0) for it in items]


def test_toy_judge_is_one_class_the_cli_and_the_run_config_build(tmp_path, monkeypatch, capsys):
    from tl_persona.cli import main
    from tl_persona.evals import registry
    from tl_persona.run import RunConfig, _judge

    j = registry.build_judge("test_architecture:KeywordJudge", registry.JudgeOptions(model="w42"))
    assert isinstance(j, KeywordJudge) and j.word == "w42"
    monkeypatch.setattr(registry, "JUDGES", dict(registry.JUDGES))
    registry.register_judge("keyword", KeywordJudge, "misaligned when the answer says a word")
    assert "keyword" in registry.judge_names()
    assert registry.build_judge("keyword", registry.JudgeOptions(model="w3")).word == "w3"
    cfg = RunConfig.from_mapping({"models": {"base": "organism:base", "finetuned": "organism:misaligned"},
                                  "sae": {"sae": "organism:sae"}, "prompts": {"prompts": "organism:eval"},
                                  "judge": {"kind": "keyword", "model": "w7"}})
    assert _judge(cfg, tmp_path).word == "w7"
    KeywordJudge.calls = 0
    rc = main(["verify", "--base", "organism:base", "--finetuned", "organism:misaligned", "--sae", "organism:sae",
               "--prompts", "organism:eval:medical", "--limit", "2", "--latent", "3", "--alphas", "10", "--n-samples",
               "1", "--n-controls", "0", "--max-new-tokens", "2", "--suppress", "--judge", "keyword"])
    assert rc == 0 and KeywordJudge.calls == 4 * 2  # both models unmodified, steered, negatively steered: x 2 prompts
    with pytest.raises(BadInput, match="did you mean 'keyword'"):
        registry.build_judge("keywrd")
    with pytest.raises(BadInput, match="cannot import"):
        registry.build_judge("test_architecture:NoSuchJudge")


def test_selection_vocabulary_is_one_and_counts_match_masks():
    assert check_selection("generated") == "response"
    with pytest.raises(BadInput, match="not a token selection"):
        check_selection("middle")
    rng = np.random.default_rng(1)
    for _ in range(50):
        B, T = 4, 9
        lengths = rng.integers(1, T + 1, B)
        plen = rng.integers(1, T + 2, B)
        has_bos = rng.random(B) < 0.5
        valid = torch.zeros(B, T, dtype=torch.bool)
        for r in range(B):
            valid[r, int(has_bos[r]):lengths[r]] = True
        for which in SELECTIONS:
            m = select(which, valid, torch.as_tensor(plen))
            if which == "last_prompt":  # a prompt cut short has lost its last token
                m &= torch.as_tensor(plen <= lengths)[:, None]
            assert m.sum(1).tolist() == count_selected(which, lengths, plen, has_bos).tolist(), which


# --------------------------------------------------------------------------- layering, read from the source
_CORE = {"_version", "provenance", "validate", "tokens"}
_LIBRARY = _CORE | {"models", "saes", "hooks", "interventions", "data", "stats", "engine", "diff", "directions",
                    "inspection", "verify", "evals"}


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tl_persona":
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.ImportFrom) and node.level:
            out.append(("tl_persona.<relative>", [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.split(".")[0] == "tl_persona"]
    return out


def _submodules() -> set[str]:
    return {p.stem for p in PKG.glob("*.py")} | {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}


def test_layers_of_the_import_graph():
    subs = _submodules()
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG.parent).with_suffix("")
        top = rel.parts[1] if len(rel.parts) > 1 else ""
        for module, names in _imports(path):
            assert module != "tl_persona" or all(n in subs for n in names) or rel.parts[-1] == "__init__", (
                f"{rel} imports names from the package root ({names}); import them from their module")
            assert module != "tl_persona" or names, f"{rel} imports the package root"
            target = module.split(".")[1] if module.count(".") >= 1 and module != "tl_persona.<relative>" else ""
            if module == "tl_persona":
                target = names[0] if names else ""
            if top in _CORE:
                assert target in _CORE or target == "", f"core module {rel} imports {module}"
            if top in _LIBRARY:
                assert target != "organism", f"library module {rel} imports the organism ({module})"


# --------------------------------------------------------------------------- the import graph, whole
# The layers of docs/architecture.md, lowest first. A module may import its own layer and the ones
# below (never one above: no climbing), and the graph of modules has no cycle, whether the import
# is at the top of a file or inside a function.
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    ("core", frozenset({"_version", "validate", "tokens", "provenance", "threads"})),
    ("foundations", frozenset({"models", "saes", "stats", "report"})),
    ("hooks and data", frozenset({"hooks", "data", "directions"})),
    ("instruments", frozenset({"interventions", "engine", "evals"})),
    ("analyses", frozenset({"diff", "inspection", "verify", "vectors", "screening"})),
    ("organism", frozenset({"organism"})),
    ("experiments", frozenset({"series", "attribution", "prevention", "demo"})),
    ("entry points", frozenset({"loading", "prompt_specs", "run", "cli", "testing", "smollm2"})),
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _all_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def _edges(mods: dict[str, Path]) -> list[tuple[str, str, str, int]]:
    """Every import of the package as (importer, imported module, imported name or '', line)."""
    out = []
    for mod, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against the importing module's package
                    pkg = mod.split(".")[: len(mod.split(".")) - (path.name != "__init__.py") - (node.level - 1)]
                    target = ".".join(pkg + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] != "tl_persona":
                    continue
                for a in node.names:
                    sub = f"{target}.{a.name}"
                    out.append((mod, sub, "", node.lineno) if sub in mods else (mod, target, a.name, node.lineno))
            elif isinstance(node, ast.Import):
                out += [(mod, a.name, "", node.lineno) for a in node.names if a.name.split(".")[0] == "tl_persona"]
    return out


def _layer(mod: str) -> int:
    top = mod.split(".")[1] if "." in mod else ""
    for i, (_, members) in enumerate(LAYERS):
        if top in members:
            return i
    return -1


def test_every_module_has_a_layer():
    missing = sorted({m.split(".")[1] for m in _all_modules() if "." in m and _layer(m) < 0})
    assert not missing, f"modules missing from LAYERS (and docs/architecture.md): {missing}"


def test_the_architecture_page_covers_every_module():
    """docs/architecture.md names every module of the package (a subpackage's modules by name)."""
    text = (PKG.parent / "docs" / "architecture.md").read_text()
    names = {m.split(".")[-1] for m in _all_modules() if m != "tl_persona"}
    missing = sorted(n for n in names if f"`{n}`" not in text and f"`{n}/`" not in text)
    assert not missing, f"modules docs/architecture.md does not mention: {missing}"


def test_no_import_climbs_a_layer():
    mods = _all_modules()
    climbs = [f"{a} (layer {LAYERS[_layer(a)][0]!r}, line {line}) imports {b} (layer {LAYERS[_layer(b)][0]!r})"
              for a, b, _, line in _edges(mods) if a != "tl_persona" and _layer(b) > _layer(a)]
    assert not climbs, "imports that climb to a higher layer:\n  " + "\n  ".join(climbs)


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of ``graph`` (as a path that returns to its start), or [] when it has none."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> list[str]:
        state[v] = 1
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        state[v] = 2
        stack.pop()
        return []

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return []


def _package_of(mod: str) -> str:
    return ".".join(mod.split(".")[:2])


def test_the_import_graph_has_no_cycle():
    mods = _all_modules()
    edges = [(a, b) for a, b, _, _ in _edges(mods) if a != b and a != "tl_persona"]
    graph: dict[str, set[str]] = {}
    for a, b in edges:  # a package's __init__ importing its own modules is how a package is built
        if not (mods[a].name == "__init__.py" and b.startswith(a + ".")):
            graph.setdefault(a, set()).add(b)
    assert not (c := _cycle(graph)), "an import cycle between modules: " + " -> ".join(c)
    top: dict[str, set[str]] = {}
    for a, b in edges:
        if _package_of(a) != _package_of(b):
            top.setdefault(_package_of(a), set()).add(_package_of(b))
    assert not (c := _cycle(top)), "an import cycle between top-level modules / packages: " + " -> ".join(c)


def test_no_private_name_crosses_a_module():
    mods = _all_modules()
    found = [f"{a}:{line} imports {name} from {b}" for a, b, name, line in _edges(mods)
             if name.startswith("_") and not name.startswith("__") and b != a]
    for mod, path in mods.items():  # module._name, through `from tl_persona import x` or `import x as y`
        tree = ast.parse(path.read_text())
        aliases = {a.asname or a.name: f"{node.module}.{a.name}" for node in ast.walk(tree)
                   if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tl_persona")
                   for a in node.names if f"{node.module}.{a.name}" in mods}
        aliases |= {a.asname: a.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for a in node.names if a.asname and a.name.startswith("tl_persona")}
        found += [f"{mod}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}" for node in ast.walk(tree)
                  if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                  and node.value.id in aliases and node.attr.startswith("_") and not node.attr.startswith("__")
                  and aliases[node.value.id] != mod]
    assert not found, "private names used across modules (make them public, or move them):\n  " + "\n  ".join(found)


def test_the_graph_checks_can_fail():
    """The checks above catch what they are for, on a made-up graph and made-up sources."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}}) == []
    assert _layer("tl_persona.organism.layers") > _layer("tl_persona.diff") > _layer("tl_persona.validate")


# --------------------------------------------------------------------------- the shape of the code
MAX_LINES = 80
# Functions that other open issues are rewriting in parallel, each capped at its length when this
# test was written (so it cannot grow): drop an entry when its issue lands.
PENDING_LONG: dict[str, tuple[int, str]] = {}
# Modules whose bad-input errors are still plain ValueError/TypeError while other issues rework them.
PENDING_ERRORS: dict[str, tuple[int, str]] = {}


def _functions(tree: ast.AST, prefix: str):
    """(qualified name, lines) of every function and method, nested ones included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield f"{prefix}.{node.name}", node.end_lineno - node.lineno + 1
            yield from _functions(node, f"{prefix}.{node.name}")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}.{node.name}")


def test_no_function_is_longer_than_80_lines():
    too_long = []
    for mod, path in _all_modules().items():
        for name, n in _functions(ast.parse(path.read_text()), mod):
            cap = PENDING_LONG.get(name, (MAX_LINES, ""))[0]
            if n > cap:
                too_long.append(f"{name}: {n} lines" + (f" (pending, capped at {cap})" if cap > MAX_LINES else ""))
    assert not too_long, f"functions over {MAX_LINES} lines (split them):\n  " + "\n  ".join(sorted(too_long))


def test_bad_input_is_one_error_family():
    """Bad input raises validate.BadInput (a ValueError and a TypeError), never a bare ValueError or
    TypeError; and "is it an SAE" is asked in one place, saes.is_sae."""
    import re

    from tl_persona.validate import BadInput as B

    assert issubclass(B, ValueError) and issubclass(B, TypeError)
    bare, sae_checks = [], []
    for mod, path in _all_modules().items():
        text = path.read_text()
        n = len(re.findall(r"raise (?:ValueError|TypeError)\(", text))
        if n > PENDING_ERRORS.get(mod, (0, ""))[0]:
            bare.append(f"{mod}: {n}")
        if mod != "tl_persona.saes":
            sae_checks += [f"{mod}: {m}" for m in re.findall(r"hasattr\(\w+, \"cfg\"\)", text)]
    assert not bare, "modules raising bare ValueError/TypeError for bad input (raise BadInput):\n  " + "\n  ".join(bare)
    assert not sae_checks, f"SAE checks outside saes.is_sae: {sae_checks}"
