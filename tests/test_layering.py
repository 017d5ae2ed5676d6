"""The import graph of src/kollm: no circle, and no layer importing a layer above it.

Every `import` counts, at the top of a file or inside a function (a function-level import is a
dependency all the same: it runs when the function does). A module may import its own layer and
the layers below; `from pkg import name` is an edge to `pkg.name` when that is a module, else to
`pkg` (whose __init__ runs). A new top-level module or package must be placed in LAYERS.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Lowest first. Within a layer modules may import each other (never in a circle).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # values, files and services with no kollm dependency of their own
    ("foundation", ("kollm", "kollm.argtypes", "kollm.jsonrows", "kollm.openai_client", "kollm.judging",
                    "kollm.answers")),
    # the building blocks: the model, tokenizers, data (chat rendering included), instruction
    # checkers, and the dry-run plan every stage prints
    ("blocks", ("kollm.model", "kollm.tokenizer", "kollm.data", "kollm.ifeval", "kollm.plan")),
    # methods the training stages use: RL rollouts and rewards, checkpoint merging
    ("methods", ("kollm.rl", "kollm.merge")),
    # the stages: training (every post-training stage), evaluation, serving
    ("stages", ("kollm.train", "kollm.eval", "kollm.serve")),
    # what runs stages: the command table, recipes, the demo, the report
    ("entry", ("kollm.cli", "kollm.recipe", "kollm.demo", "kollm.demo_corpus", "kollm.demo_scores", "kollm.report")),
]


def modules() -> dict[str, Path]:
    out = {}
    for p in sorted((SRC / "kollm").rglob("*.py")):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        package = m if path.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            graph[m] |= {t for t in targets if t in mods and t != m}
    return graph


def layer_of(module: str) -> int:
    best = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            # "kollm" names the package's own __init__, not everything below it
            inside = module == p or (p != "kollm" and module.startswith(p + "."))
            if inside and (best is None or len(p) > len(best[1])):
                best = (i, p)
    assert best is not None, f"{module}: not in any layer of tests/test_layering.py LAYERS; place it there"
    return best[0]


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle():
    assert circles(import_graph()) == []


def test_no_layer_imports_a_layer_above_it():
    graph = import_graph()
    upward = [f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
              for a in sorted(graph) for b in sorted(graph[a]) if layer_of(b) > layer_of(a)]
    assert upward == []


def test_the_graph_sees_function_level_and_package_imports():
    """The reader itself: a function-level import is an edge, and `from pkg import submodule` goes to
    the submodule (kollm.model.transformer imports kollm.model.masks that way)."""
    graph = import_graph()
    assert "kollm.model.masks" in graph["kollm.model.transformer"]
    assert "kollm.model.transformer" in graph["kollm.model"]  # the package __init__ re-exports it
    assert "kollm.train.trainer" in graph["kollm.cli"]  # imported inside main()


def test_every_module_is_placed():
    assert [m for m in modules() if not any(m == p or (p != "kollm" and m.startswith(p + "."))
                                            for _, ps in LAYERS for p in ps)] == []


def test_no_module_imports_another_modules_private_name():
    """`from kollm.x import _name` couples a module to another's insides (dpo.py and grpo.py once
    imported the config's private `_build`): what two modules share is public in one of them."""
    private = []
    for m, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kollm"):
                private += [f"{m}: from {node.module} import {a.name}" for a in node.names
                            if a.name.startswith("_") and a.name != "__version__"]
    assert private == []


def test_post_training_stages_do_not_import_pretraining():
    """Every stage's model setup is kollm.train.model_setup; a stage module imports no other stage's
    command module (the stages are listed in kollm.train.stages)."""
    graph = import_graph()
    stages = ["kollm.train.pretrain", "kollm.train.sft", "kollm.train.dpo", "kollm.train.distill", "kollm.train.grpo"]
    crossing = [f"{a} imports {b}" for a in graph if a.startswith("kollm.train.") and a != "kollm.train.stages"
                for b in graph[a] & set(stages) if b != a and not a.startswith(b + "_")]
    assert crossing == []
