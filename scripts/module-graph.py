#!/usr/bin/env python3
"""The import graph of the top-level modules of src/, and its cycles.

Maps each top-level module (a file or a directory of src/) to the `crate::X` modules it names
outside `#[cfg(test)]` (doc links count: a link names its target), prints the graph, then the
strongly connected components of more than one module. Exits 1 when there is one: the modules
are layered (ARCHITECTURE.md, "Module graph") and a cycle undoes the layering.

Run from the repository root: python3 scripts/module-graph.py
"""

import os
import re
import sys

ROOT = "src"


def top_module(path):
    parts = os.path.relpath(path, ROOT)[:-3].split("/")
    if parts[-1] == "mod":
        parts = parts[:-1]
    return parts[0]


def graph():
    deps = {}
    for directory, _, files in os.walk(ROOT):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(directory, name)
            top = top_module(path)
            with open(path) as f:
                text = f.read()
            # Everything from the first `#[cfg(test)]` on is test code (modules at the end).
            cut = text.find("#[cfg(test)]")
            if cut >= 0:
                text = text[:cut]
            refs = set(re.findall(r"crate::(\w+)", text))
            for group in re.finditer(r"crate::\{([^}]*)\}", text, re.S):
                refs.update(re.findall(r"(?:^|,)\s*(\w+)", group.group(1)))
            deps.setdefault(top, set()).update(r for r in refs if r != top)
    # Keep modules only (`crate::Backend` is a re-export at the root).
    return {m: {d for d in ds if d in deps} for m, ds in deps.items()}


def cycles(deps):
    """Tarjan's strongly connected components of more than one module."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(deps[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(deps):
        if v not in index:
            visit(v)
    return found


def main():
    deps = graph()
    for module in sorted(deps):
        print(module, "->", sorted(deps[module]))
    found = cycles(deps)
    print("SCCs:", found)
    if found:
        print("module-graph.py: import cycle between top-level modules", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
