"""The house's layers, read from the code's imports (function-level and type-only imports
count): the kernel imports only the kernel; `filters/` and `providers/` never import the
composition root or each other; `ferro_proxy/` never imports `filters/` or `providers/`.

The allow-lists hold the violations and import cycles that existed when this test was written
(issue 14). They may only shrink: a new violation fails, and so does an entry that no longer
occurs (delete it), so the lists end empty as the seams work lands.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("ferro_proxy", "filters", "providers")

KERNEL = {
    "ferro_proxy.chain",
    "ferro_proxy.config",
    "ferro_proxy.config_schema",
    "ferro_proxy.cors",
    "ferro_proxy.errors",
    "ferro_proxy.exchange",
    "ferro_proxy.jsonlog",
    "ferro_proxy.keepalive",
    "ferro_proxy.metric_labels",
    "ferro_proxy.metrics",
    "ferro_proxy.netpolicy",
    "ferro_proxy.proxy_path",
    "ferro_proxy.redaction",
    "ferro_proxy.sse",
    "ferro_proxy.url_redact",
}
COMPOSITION_ROOT = {
    "ferro_proxy.__main__",
    "ferro_proxy.admin_app",
    "ferro_proxy.cli",
    "ferro_proxy.gateway",
    "ferro_proxy.ingress_anthropic",
    "ferro_proxy.proxy_app",
    "ferro_proxy.reload",
    "ferro_proxy.server",
    "ferro_proxy.validate",
}

ALLOWED_VIOLATIONS = {
    ("ferro_proxy.chain", "ferro_proxy.gateway"),
    ("ferro_proxy.chain", "filters"),
    ("ferro_proxy.metric_labels", "ferro_proxy.gateway"),
    ("ferro_proxy.gateway", "filters.router"),
    ("ferro_proxy.gateway", "providers.base"),
    ("ferro_proxy.gateway", "providers.catalog"),
    ("ferro_proxy.gateway", "providers.registry"),
    ("ferro_proxy.ingress_anthropic", "filters.auth"),
    ("ferro_proxy.ingress_anthropic", "providers.anthropic"),
    ("ferro_proxy.ingress_anthropic", "providers.translate_anthropic"),
    ("ferro_proxy.intercept.hosts", "providers.registry"),
    ("ferro_proxy.proxy_app", "filters.auth"),
    ("filters.auth", "ferro_proxy.gateway"),
    ("filters.mcp", "ferro_proxy.gateway"),
    ("filters.mcp", "providers.translate_anthropic"),
    ("filters.response_cache", "providers.translate_anthropic"),
    ("filters.routing.state", "ferro_proxy.gateway"),
    ("filters.routing.strategies", "providers.base"),
    ("filters.routing.strategies", "providers.catalog"),
    ("providers.azure_foundry", "ferro_proxy.gateway"),
    ("providers.base", "ferro_proxy.gateway"),
    ("providers.bedrock", "ferro_proxy.gateway"),
    ("providers.openai_compat", "ferro_proxy.gateway"),
    ("providers.openai_more", "ferro_proxy.gateway"),
    ("providers.registry", "ferro_proxy.gateway"),
    ("providers.replicate", "ferro_proxy.gateway"),
    ("providers.vertex", "ferro_proxy.gateway"),
}
# Import cycles today (strongly connected groups of modules); the goal is at most one.
ALLOWED_CYCLES = 5


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        named: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                named.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                named.add(module)
                named.update(f"{module}.{alias.name}" for alias in node.names)
        edges = set()
        for target in named:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def violations(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    found = set()
    for importer, imported in ((a, b) for a, targets in graph.items() for b in targets):
        top_a, top_b = importer.split(".")[0], imported.split(".")[0]
        if importer in KERNEL and imported not in KERNEL:
            found.add((importer, imported))
        if top_a == "ferro_proxy" and top_b in ("filters", "providers"):
            found.add((importer, imported))
        if top_a in ("filters", "providers") and imported in COMPOSITION_ROOT:
            found.add((importer, imported))
        if {top_a, top_b} == {"filters", "providers"}:
            found.add((importer, imported))
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_new_layer_violations() -> None:
    assert violations(import_graph()) - ALLOWED_VIOLATIONS == set()


def test_the_allow_list_only_shrinks() -> None:
    assert ALLOWED_VIOLATIONS - violations(import_graph()) == set(), "fixed: remove these from the list"


def test_no_new_import_cycles() -> None:
    found = cycles(import_graph())
    assert len(found) <= ALLOWED_CYCLES, found
    assert len(found) == ALLOWED_CYCLES, f"{len(found)} cycles now: lower ALLOWED_CYCLES"


def test_the_kernel_names_exist() -> None:
    graph = import_graph()
    assert KERNEL <= set(graph) and COMPOSITION_ROOT <= set(graph)
