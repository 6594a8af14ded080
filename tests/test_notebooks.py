"""The example notebooks: stored clean, and the ones that run offline execute from top to bottom.

Every notebook in ``examples/`` must be valid nbformat and stored without outputs or execution
counts. A notebook whose metadata says ``{"tl_persona": {"requires": ["hub", "gpu"]}}`` (or either)
cannot run here (no model hub, no GPU) and is only checked statically: its code parses and its
``tl_persona`` imports resolve. Every other notebook is executed with nbclient in a fresh
``python3`` kernel whose working directory is ``examples/``.

The kernel is the interpreter running the tests: a ``python3`` kernelspec pointing at
``sys.executable`` is written to a temporary Jupyter path for the session, so no user-level
kernelspec (or a ``python`` on PATH from another environment) can take its place. Select these
tests with ``-k notebook``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is in the dev extra: pip install -e '.[dev]'")
nbclient = pytest.importorskip("nbclient", reason="nbclient is in the dev extra: pip install -e '.[dev]'")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_docs import check_tl_imports  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
OFFLINE_BLOCKERS = {"hub", "gpu"}  # a notebook that needs one of these is not executed here
KNOWN_REQUIREMENTS = OFFLINE_BLOCKERS
CELL_TIMEOUT_S = 600


def _read(path: Path):
    return nbformat.read(str(path), as_version=4)


def _requires(nb) -> set[str]:
    req = nb.metadata.get("tl_persona", {}).get("requires", [])
    return set(req)


def _runnable(path: Path) -> bool:
    return not (_requires(_read(path)) & OFFLINE_BLOCKERS)


def _ids(paths):
    return [p.name for p in paths]


@pytest.fixture(scope="session")
def python3_kernel(tmp_path_factory):
    """A ``python3`` kernelspec for this interpreter, first on the Jupyter path for the session."""
    from ipykernel.kernelspec import install

    root = tmp_path_factory.mktemp("jupyter")
    install(kernel_name="python3", display_name="Python 3 (tl_persona tests)", prefix=str(root))
    data = root / "share" / "jupyter"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", os.pathsep.join([str(data), *filter(None, [os.environ.get("JUPYTER_PATH")])]))
        mp.setenv("JUPYTER_RUNTIME_DIR", str(root / "runtime"))
        mp.setenv("IPYTHONDIR", str(root / "ipython"))
        mp.setenv("MPLBACKEND", "Agg")
        # the kernel imports this checkout's tl_persona even when it is not pip-installed
        mp.setenv("PYTHONPATH", os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
        yield "python3"


def _execute(nb, kernel_name: str):
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name=kernel_name,
        resources={"metadata": {"path": str(EXAMPLES)}},
    )
    return client.execute()


def test_examples_folder_has_notebooks():
    assert EXAMPLES.is_dir(), "examples/ is missing"
    assert NOTEBOOKS, "examples/ has no notebooks"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_valid_and_stored_without_outputs(path):
    nb = _read(path)
    nbformat.validate(nb)
    unknown = _requires(nb) - KNOWN_REQUIREMENTS
    assert not unknown, f"{path.name}: metadata tl_persona.requires has unknown entries {sorted(unknown)}"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        assert not cell.get("outputs"), f"{path.name}: cell {i} has stored outputs; clear them before committing"
        assert cell.get("execution_count") is None, (
            f"{path.name}: cell {i} has execution_count {cell.get('execution_count')}; clear outputs before committing"
        )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_code_parses_and_imports_resolve(path):
    nb = _read(path)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            # IPython magics and shell escapes are not Python; blank them before parsing
            src = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in cell.source.splitlines())
            check_tl_imports(src, f"{path.name}, cell {i}")


RUNNABLE = [p for p in NOTEBOOKS if _runnable(p)]


@pytest.mark.parametrize("path", RUNNABLE, ids=_ids(RUNNABLE))
def test_notebook_executes(path, python3_kernel):
    _execute(_read(path), python3_kernel)


def test_notebook_kernel_is_this_interpreter_in_examples(python3_kernel):
    """The machinery itself: the kernel runs this interpreter, in examples/, and imports this tl_persona."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("import os, sys\nimport tl_persona\nprint(tl_persona.__file__)\nprint(sys.executable)\nprint(os.getcwd())"),
    ]
    out = _execute(nb, python3_kernel)
    text = "".join(o.get("text", "") for o in out.cells[0].outputs if o.get("output_type") == "stream")
    pkg, exe, cwd = text.strip().splitlines()[-3:]
    assert os.path.realpath(pkg).startswith(os.path.realpath(REPO / "tl_persona"))
    assert os.path.realpath(exe) == os.path.realpath(sys.executable)
    assert os.path.realpath(cwd) == os.path.realpath(EXAMPLES)


# Notebooks that need the hub and a GPU but have a rehearsal: the environment variable makes their
# first cell build tiny local stand-ins (models, SAEs, a loopback judge); every later cell is the
# users' code, unchanged.
REHEARSALS = {"real_model_walkthrough.ipynb": "TL_PERSONA_REHEARSAL"}


@pytest.mark.parametrize("name", sorted(REHEARSALS))
def test_notebook_rehearsal_executes(name, python3_kernel, monkeypatch, tmp_path):
    monkeypatch.setenv(REHEARSALS[name], "1")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the rehearsal's checkpoints and results go here
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny models: threads only contend on a shared machine
    before = sorted(p.name for p in EXAMPLES.iterdir())
    nb = _execute(_read(EXAMPLES / name), python3_kernel)
    assert sorted(p.name for p in EXAMPLES.iterdir()) == before, "the rehearsal wrote into examples/"
    last = nb.cells[-1]
    assert any("text/plain" in o.get("data", {}) for o in last.outputs), "the last cell showed no table"
    assert list(tmp_path.glob("tl_persona_rehearsal_*/qwen_verify.jsonl")), "the sweep wrote no record"
