#!/usr/bin/env python3
"""No import circle between the crate's modules: every `crate::<module>` that a module's code
names (in `use` or in a path) is an edge, and no module may reach itself through them.

    python3 scripts/check-imports.py             # src/ of this checkout
    python3 scripts/check-imports.py --selftest  # the checker finds a planted circle

A module is a top-level one of `src/` (`src/cpu.rs` is `cpu`, `src/select/row.rs` is `select`).
Test code is not counted: a `#[cfg(test)]` module of lib.rs, a file named `tests.rs`, and the
rest of a file from its `#[cfg(test)]` `mod` on. Exit status 1 with each circle and the lines
that make it.
"""
import os
import re
import sys
import tempfile

PATH = re.compile(r"\bcrate::(\w+)")
USE_GROUP = re.compile(r"\buse\s+crate::\{([^;]*)\}", re.S)
TEST_MOD = re.compile(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)", re.S)


def modules(src):
    """{module: [files]} of the crate under `src`, test-only modules of lib.rs left out."""
    lib = open(os.path.join(src, "lib.rs"), encoding="utf-8").read()
    test_only = set(TEST_MOD.findall(lib))
    out = {}
    for dirpath, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs") or f == "tests.rs":
                continue
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, src).split(os.sep)
            name = rel[0][:-3] if len(rel) == 1 else rel[0]
            if name in ("lib", "main") or name in test_only:
                continue
            out.setdefault(name, []).append(path)
    return out


def code_lines(path):
    """The file's lines up to its first `#[cfg(test)]` module, comments blanked."""
    lines = open(path, encoding="utf-8").read().splitlines()
    out = []
    for i, line in enumerate(lines):
        if line.strip() == "#[cfg(test)]" and i + 1 < len(lines) and re.match(
            r"\s*(pub(\([^)]*\))?\s+)?mod\s+\w+", lines[i + 1]
        ):
            break
        out.append(re.sub(r"//.*", "", line))
    return out


def edges(src):
    """{(from, to): [file:line, ...]} between distinct modules."""
    mods = modules(src)
    out = {}
    for m, files in mods.items():
        for path in files:
            lines = code_lines(path)
            text = "\n".join(lines)
            found = [(x.group(1), text.count("\n", 0, x.start()) + 1) for x in PATH.finditer(text)]
            for g in USE_GROUP.finditer(text):  # use crate::{a::x, b}
                line = text.count("\n", 0, g.start()) + 1
                for item in re.findall(r"(?:^|[,{]\s*)(\w+)", g.group(1)):
                    found.append((item, line))
            for target, line in found:
                if target != m and target in mods:
                    out.setdefault((m, target), []).append(f"{os.path.relpath(path)}:{line}")
    return out


def circles(graph_edges):
    """The strongly connected components of more than one module (Tarjan)."""
    graph = {}
    for a, b in graph_edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
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


def report(src):
    e = edges(src)
    found = circles(e)
    for comp in found:
        print(f"import circle: {' <-> '.join(comp)}", file=sys.stderr)
        for (a, b), where in sorted(e.items()):
            if a in comp and b in comp:
                print(f"  {a} -> {b}: {', '.join(where[:3])}", file=sys.stderr)
    return found


def selftest():
    with tempfile.TemporaryDirectory() as d:
        def write(p, text):
            os.makedirs(os.path.dirname(os.path.join(d, p)), exist_ok=True)
            open(os.path.join(d, p), "w", encoding="utf-8").write(text)
        write("lib.rs", "mod a;\nmod b;\nmod c;\n#[cfg(test)]\nmod t;\n")
        write("a.rs", "use crate::b::x;\n// crate::c in a comment\n")
        write("b/mod.rs", "mod inner;\n")
        write("b/inner.rs", "use crate::{c::y, a};\n")
        write("c.rs", "fn f() {}\n#[cfg(test)]\nmod tests {\n    use crate::a;\n}\n")
        write("t.rs", "use crate::a;\n")
        write("b/tests.rs", "use crate::c;\n")
        got = circles(edges(d))
        ok = got == [["a", "b"]]
        print(f"check-imports selftest: {'ok' if ok else 'FAILED: ' + str(got)}")
        return 0 if ok else 1


def main():
    if sys.argv[1:] == ["--selftest"]:
        return selftest()
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    found = report("src")
    print(f"check-imports: {len(found)} import circles in src/")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
