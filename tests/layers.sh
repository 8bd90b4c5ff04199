#!/usr/bin/env bash
# The server's modules import only downward: every `crate::x` path in server/src names a
# top-level module below the one it is written in, in the order of LAYERS (lowest first; the
# crate root, `run`, sits above all of them). Prints one line per edge that goes up or sideways
# and one per import cycle, and fails if there is any.
#
#   bash tests/layers.sh [SRC_DIR...]    (default: server/src)
#
# Other crates' src dirs may be given too: they are checked for cycles among their top-level
# modules (LAYERS applies to server/src only). Comment lines are skipped, so doc links do not
# count. `super::` paths are followed: one that climbs out of its top-level module and names
# another counts as a `crate::` path (inline `mod` blocks are not counted as a level).
set -euo pipefail
cd "$(dirname "$0")/.."

# The server's reading order, lowest first; server/src/lib.rs's layout doc says the same.
LAYERS="secret tls http auth upstream cluster metrics proxy admin config cli"

if [ "$#" -eq 0 ]; then set -- server/src; fi

exec python3 - "$LAYERS" "$@" <<'PY'
import os, re, sys

layers = sys.argv[1].split()
failed = False

def top_module(src, path):
    """The top-level module a file belongs to (None: the crate root)."""
    rel = os.path.relpath(path, src)
    parts = rel.split(os.sep)
    if parts[0] in ("lib.rs", "main.rs"):
        return None
    if parts[0] == "bin":
        return False  # binaries are their own crates
    return parts[0][:-3] if len(parts) == 1 else parts[0]

def module_path(src, path):
    """The module path of a file below the crate root: cluster/node/mod.rs is [cluster, node]."""
    parts = os.path.relpath(path, src).split(os.sep)
    parts[-1] = parts[-1][:-3]
    if parts[-1] in ("mod", "lib", "main"):
        parts.pop()
    return parts

def names(group):
    """Top-level names in the body of `crate::{ ... }` (nested braces skipped)."""
    out, depth, cur = [], 0, ""
    for ch in group:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(cur)
            cur = ""
            continue
        if depth == 0 and ch != "}":
            cur += ch
    out.append(cur)
    return [re.match(r"\s*(\w*)", n).group(1) for n in out if n.strip()]

def edges_of(src):
    """{(from, to): first 'file:line'} over every `crate::` path under src."""
    edges = {}
    mods = set()
    supers = []
    for root, _, files in os.walk(src):
        for f in sorted(files):
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            frm = top_module(src, path)
            if frm is False:
                continue
            if frm is not None:
                mods.add(frm)
            text = open(path, encoding="utf-8").read()
            lines = []
            for line in text.split("\n"):
                s = line.lstrip()
                lines.append("" if s.startswith("//") else line)
            code = "\n".join(lines)
            # `super::` chains: resolved from the file's module path; only one that leaves the
            # top-level module and names another top-level module is an edge.
            here = module_path(src, path)
            for m in re.finditer(r"\b((?:super::)+)(\{|\w+)", code):
                up = m.group(1).count("super::")
                if up < len(here):
                    continue  # stays inside its top-level module
                lineno = code.count("\n", 0, m.start()) + 1
                if m.group(2) == "{":
                    depth, i = 1, m.end()
                    while i < len(code) and depth:
                        depth += {"{": 1, "}": -1}.get(code[i], 0)
                        i += 1
                    targets = names(code[m.end():i - 1])
                else:
                    targets = [m.group(2)]
                for to in targets:
                    supers.append((frm, to, f"{path}:{lineno}"))
            for m in re.finditer(r"\bcrate::(\{|\w+)", code):
                lineno = code.count("\n", 0, m.start()) + 1
                if m.group(1) == "{":
                    depth, i = 1, m.end()
                    while i < len(code) and depth:
                        depth += {"{": 1, "}": -1}.get(code[i], 0)
                        i += 1
                    targets = names(code[m.end():i - 1])
                else:
                    targets = [m.group(1)]
                for to in targets:
                    edges.setdefault((frm, to), f"{path}:{lineno}")
    for frm, to, where in supers:
        if to in mods:
            edges.setdefault((frm, to), where)
    # A name that is no top-level module is an item of the crate root.
    fixed = {}
    for (frm, to), where in edges.items():
        to = to if to in mods else None
        if frm != to:
            fixed.setdefault((frm, to), where)
    return mods, fixed

def label(m):
    return m if m is not None else "(crate root)"

def cycles(edges):
    """Each strongly connected component of more than one module, as a list of modules."""
    graph = {}
    for frm, to in edges:
        graph.setdefault(frm, set()).add(to)
        graph.setdefault(to, set())
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]
    def visit(v):
        index[v] = low[v] = n[0]; n[0] += 1
        stack.append(v); on.add(v)
        for w in sorted(graph[v], key=label):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp, key=label))
    for v in sorted(graph, key=label):
        if v not in index:
            visit(v)
    return out

for src in sys.argv[2:]:
    src = src.rstrip("/")
    mods, edges = edges_of(src)
    if not mods:
        print(f"layers: {src}: no modules found"); failed = True; continue
    for comp in cycles(edges):
        members = set(comp)
        for (frm, to), where in sorted(edges.items(), key=lambda e: e[1]):
            if frm in members and to in members:
                print(f"layers: {src}: cycle among {', '.join(map(label, comp))}: {label(frm)} -> {label(to)} ({where})")
        failed = True
    if os.path.normpath(src) != os.path.normpath("server/src"):
        continue
    rank = {m: i for i, m in enumerate(layers)}
    for m in sorted(mods - set(rank)):
        print(f"layers: {src}: module {m} is not in LAYERS (tests/layers.sh): place it in the order")
        failed = True
    for (frm, to), where in sorted(edges.items(), key=lambda e: e[1]):
        if frm is None or frm not in rank:
            continue  # the crate root may use everything
        if to is None or (to in rank and rank[to] >= rank[frm]):
            print(f"layers: {label(frm)} -> {label(to)} goes up the layer order ({where})")
            failed = True
sys.exit(1 if failed else 0)
PY
