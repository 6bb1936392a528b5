"""The package graph of DESIGN.md: no cycle between bastion's packages, transports above the port.

``lint-imports`` (``make test``) checks the layers; this test names the cycle itself when
there is one, which a layers contract reports only as separate illegal imports.
"""

from __future__ import annotations

import grimp

PACKAGE = "bastion"


def _package_graph() -> dict[str, set[str]]:
    """First-level module or subpackage of bastion -> the first-level ones it imports."""
    graph = grimp.build_graph(PACKAGE, cache_dir=None)
    tops = sorted(graph.find_children(PACKAGE))
    edges: dict[str, set[str]] = {top: set() for top in tops}
    for importer in tops:
        for imported in tops:
            if importer != imported and graph.direct_import_exists(
                importer=importer, imported=imported, as_packages=True
            ):
                edges[importer].add(imported)
    return edges


def _find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path whose last node is its first, or None (depth-first search)."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for nxt in sorted(edges[node]):
            if nxt in on_path:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in done:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for start in sorted(edges):
        if start not in done:
            found = visit(start)
            if found:
                return found
    return None


def test_the_package_graph_has_no_cycle() -> None:
    cycle = _find_cycle(_package_graph())
    assert cycle is None, "package import cycle: " + " -> ".join(cycle or [])


def test_transports_do_not_import_the_aggregator() -> None:
    graph = grimp.build_graph(PACKAGE, cache_dir=None)
    chains = graph.find_shortest_chains(
        importer="bastion.transport", imported="bastion.aggregator", as_packages=True
    )
    direct = graph.direct_import_exists(
        importer="bastion.transport", imported="bastion.aggregator", as_packages=True
    )
    assert not direct and not chains, "bastion.transport imports bastion.aggregator: " + "; ".join(
        " -> ".join(chain) for chain in sorted(chains)
    )


def test_a_cycle_is_named() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _find_cycle(edges) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None
