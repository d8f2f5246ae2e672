"""SASS reader for the performance model (scripts/perf/model.py), no GPU needed.

Compiles a .cu file to a cubin per target (nvcc -cubin -lineinfo), reads the resources of each
kernel (`cuobjdump --dump-resource-usage`) and its SASS with the inline chain of every
instruction (`nvdisasm -gi`: the source line, and each "inlined at" line up to the kernel),
finds the loops (backward branches) and counts instructions by source region:

- `loop(func, line)`: the SASS loops that contain an instruction of source line `line` (in its
  inline chain), the minimal ones (no smaller loop inside them does too);
- `count(func, lines, within=None)`: instructions whose inline chain touches one of `lines`,
  optionally only those inside a SASS range (a loop).

Source lines are found by text (`Source.find`), never by number, so the tables that use this
module follow the files as they change. NOPs are not counted.
"""
import hashlib
import os
import re
import subprocess
import sys
from collections import defaultdict


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode:
        sys.exit(f"perf: command failed: {' '.join(cmd)}\n{r.stderr[-4000:]}")
    return r.stdout + r.stderr


class Source:
    """A source file's lines, for finding region markers by text."""

    def __init__(self, path, text=None):
        self.path = path
        self.name = os.path.basename(path)
        self.lines = (text if text is not None else open(path).read()).split("\n")

    def find(self, sub, after=None, optional=False):
        """1-based number of the first line containing `sub` (after the line holding `after`)."""
        start = self.find(after) if after else 0
        for i in range(start, len(self.lines)):
            if sub in self.lines[i]:
                return i + 1
        if optional:
            return None
        raise LookupError(f"{self.name}: no line contains {sub!r}" + (f" after {after!r}" if after else ""))

    def block_end(self, line):
        """The line that closes the brace block opened on (or after) `line`."""
        depth, seen = 0, False
        for i in range(line - 1, len(self.lines)):
            for ch in self.lines[i].split("//")[0]:
                if ch == "{":
                    depth += 1
                    seen = True
                elif ch == "}":
                    depth -= 1
                    if seen and depth == 0:
                        return i + 1
        raise LookupError(f"{self.name}:{line}: unbalanced braces")


class Func:
    def __init__(self, name):
        self.name = name
        self.ins = []      # (opcode, frozenset of (file basename, line))
        self.labels = {}
        self.loops = []    # (first, last) instruction indices, inclusive

    def count(self, pred=None, within=None):
        lo, hi = within if within else (0, len(self.ins) - 1)
        return sum(1 for op, locs in self.ins[lo:hi + 1]
                   if not op.startswith("NOP") and (pred is None or pred(locs)))

    def loops_of(self, file, line):
        """Minimal SASS loops holding an instruction of (file, line)."""
        tagged = [(s, e) for (s, e) in self.loops
                  if any((file, line) in locs for _, locs in self.ins[s:e + 1])]
        return [(s, e) for (s, e) in tagged
                if not any((s2, e2) != (s, e) and s <= s2 and e2 <= e for (s2, e2) in tagged)]


def disasm(cubin):
    """{kernel: Func} of a cubin: every instruction with its inline chain, labels, loops."""
    out = run(["nvdisasm", "-gi", "-c", cubin])
    funcs = {}
    fn, pending, last = None, [], frozenset()
    for line in out.splitlines():
        m = re.match(r"\s*\.text\.(\w+):", line)
        if m:
            fn = funcs.setdefault(m.group(1), Func(m.group(1)))
            pending, last = [], frozenset()
            continue
        if fn is None:
            continue
        if "//##" in line:
            pending += [(os.path.basename(f), int(ln))
                        for f, ln in re.findall(r'"([^"]+)", line (\d+)', line)]
            continue
        m = re.match(r"\s*(\.L_x_\d+):", line)
        if m:
            fn.labels[m.group(1)] = len(fn.ins)
            continue
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if m:
            # nvdisasm prints the line info only where it changes: it stays in force.
            if pending:
                last, pending = frozenset(pending), []
            text = re.sub(r"^@!?U?P\w+\s+", "", m.group(2).strip())
            b = re.search(r"\bBRA\b.*`\((\.L_x_\d+)\)", text)
            if b and b.group(1) in fn.labels:
                fn.loops.append((fn.labels[b.group(1)], len(fn.ins)))  # a backward branch
            fn.ins.append((text.split()[0] if text else "", last))
    return funcs


def resources(cubin):
    """{kernel: {REG, SHARED, LOCAL, STACK, ...}} of one cubin."""
    out = run(["cuobjdump", "--dump-resource-usage", cubin])
    res, fn = {}, None
    for line in out.splitlines():
        m = re.match(r"\s*Function (\w+):", line)
        if m:
            fn = m.group(1)
            continue
        if "REG:" in line and fn:
            res[fn] = {k: int(v) for k, v in re.findall(r"(\w+(?:\[\d+\])?):(\d+)", line)}
    return res


def compile_cubin(src_text, name, arch, cache, inc, defines=()):
    """(cubin path, basename of the compiled .cu as the line info names it) of `src_text` for
    sm_`arch`, cached by content (source, includes, flags, nvcc)."""
    h = hashlib.sha256()
    h.update(src_text.encode())
    for f in sorted(os.listdir(inc)):
        if f.endswith((".cuh", ".h")):
            h.update(f.encode())
            h.update(open(os.path.join(inc, f), "rb").read())
    h.update(repr((arch, defines, nvcc_version())).encode())
    key = h.hexdigest()[:16]
    os.makedirs(cache, exist_ok=True)
    cubin = os.path.join(cache, f"{name}.sm_{arch}.{key}.cubin")
    cu = os.path.join(cache, f"{name}.{key}.cu")
    if not os.path.exists(cubin):
        with open(cu, "w") as f:
            f.write(src_text)
        cmd = ["nvcc", "-cubin", "-O3", "-std=c++17", "-lineinfo", f"-arch=sm_{arch}", "-I", inc,
               *[f"-D{d}" for d in defines], "-o", cubin + ".tmp", cu]
        run(cmd)
        os.replace(cubin + ".tmp", cubin)
    return cubin, os.path.basename(cu)


_NVCC = None


def nvcc_version():
    global _NVCC
    if _NVCC is None:
        _NVCC = run(["nvcc", "--version"]).strip().splitlines()[-1]
    return _NVCC
