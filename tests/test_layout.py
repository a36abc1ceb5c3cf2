"""The package layout: imports point one way (runtime <- algorithms <- pipelines <- experiments <- jobs),
and no module grows past 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "videoalign_ray"

# The top-level modules and packages of videoalign_ray, lowest first: a module may import only from its own
# package or from one listed before it. A strict order also rules out package-level cycles.
ORDER = [
    "errors", "config",
    "sections",     # the config sections several jobs share (output, data, model, sampling, training)
    "runtime",      # Ray / DeepSpeed / MLflow machinery, atomic files, the job skeleton
    "cli",          # entry-point glue: parse flags, logging, exit codes
    "data",         # schema, tables + rejects, decoding, transforms, cache
    "flow",         # the generator and its alignment algorithms
    "reward",       # VideoReward; the latent reward model is built from the generator's own blocks
    "synthetic",    # the world, its ground-truth scorers, generator evaluation against them
    "serve",        # the Ray Serve reward app
    "online",       # online preference collection: selection, pair store, generation actors
    "pipelines",    # job configs + run_* (orchestration)
    "experiments",  # synthetic-world experiments that run pipelines
]
RANKS = {name: i for i, name in enumerate(ORDER)}


def _top(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "videoalign_ray" and len(parts) > 1 else None


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every ``videoalign_ray`` import in ``path`` (module level and inside functions)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != "videoalign_ray" else [f"videoalign_ray.{a.name}" for a in node.names]
            found += [(node.lineno, n) for n in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(line, name) for line, name in found if name.startswith("videoalign_ray.")]


def test_every_package_has_a_rank():
    tops = {p.stem for p in PKG.glob("*.py") if p.stem != "__init__"} | {
        p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert tops == set(RANKS), f"unranked: {tops - set(RANKS)}, gone: {set(RANKS) - tops}"


def test_imports_point_one_way():
    violations = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        src = _top(".".join(rel.parts))
        if src is None or src == "__init__":
            continue
        for line, name in _imports(path):
            dst = _top(name)
            if dst != src and RANKS[dst] >= RANKS[src]:
                violations.append(f"{rel}.py:{line} ({src}, rank {RANKS[src]}) imports {name} (rank {RANKS[dst]})")
    assert not violations, "imports against the layering:\n" + "\n".join(violations)


def test_the_checker_sees_function_level_imports(tmp_path):
    """The rule would be empty if nested imports were missed: the checker must see them."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from videoalign_ray.pipelines.flow_dpo import run_flow_job\n")
    assert _imports(f) == [(2, "videoalign_ray.pipelines.flow_dpo")]


def test_no_module_over_400_lines():
    big = {str(p.relative_to(PKG.parent)): n for p in PKG.rglob("*.py")
           if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}
    assert not big, big


def _module_graph() -> dict[str, set[str]]:
    """Module -> the ``videoalign_ray`` modules it imports (module level and inside functions), resolved to modules
    of the package (``from videoalign_ray.flow import model`` counts as ``videoalign_ray.flow.model``)."""
    modules = {".".join(p.relative_to(PKG.parent).with_suffix("").parts).removesuffix(".__init__"): p
               for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            target = next((n for n in names if n in modules), None)
            if target and target != mod and not target.endswith(("videoalign_ray", "__init__")):
                graph[mod].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_between_modules():
    """Packages are layered (above); within a package, modules must not import each other in a circle either
    (pipelines/generator_pool -> online_dpo -> online_rounds -> generator_pool was one)."""
    cycles = [c for c in _cycles(_module_graph()) if not any(m.endswith(".__init__") for m in c)]
    assert not cycles, f"module import cycles: {cycles}"


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
