#!/usr/bin/env python3
"""Static numbers of the CUDA kernels, no GPU needed: registers, spills, stack and shared
memory of every kernel for each target (`nvcc -Xptxas -v`), and the SASS size of each hot
loop (`nvdisasm -g`), per element.

A hot loop is marked in the source by a comment on the line of its `for`:
    for (...) {  // hot-loop: NAME, E
where E is the number of elements one thread handles per iteration ("1/n": one element pair
of the rank count). The SASS loops are the backward branches; a marked loop is the smallest
SASS loop with an instruction of the marked line (a loop that the compiler splits, unrolls or
versions shows up as several, listed together).

usage: scripts/kernel-stats.py [--archs 80,86,89,90] [--loops-arch 90] [--keep DIR] FILE.cu...
(nvcc and nvdisasm on PATH: source the env.sh of scripts/cuda/setup.sh). Prints Markdown.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections import defaultdict


def ptxas(cu, arch, out, inc):
    cmd = ["nvcc", "-cubin", "-O3", "-std=c++17", "-lineinfo", f"-arch=sm_{arch}", "-Xptxas", "-v",
           "-I", inc, "-o", out, cu]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"nvcc failed: {' '.join(cmd)}\n{r.stderr}")
    stats, cur = {}, None
    for line in r.stderr.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            cur = m.group(1)
            stats[cur] = {"regs": 0, "stack": 0, "spill_st": 0, "spill_ld": 0, "smem": 0}
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            stats[cur].update(stack=int(m[1]), spill_st=int(m[2]), spill_ld=int(m[3]))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            stats[cur]["regs"] = int(m[1])
            s = re.search(r"(\d+) bytes smem", line)
            stats[cur]["smem"] = int(s[1]) if s else 0
    return stats


def loops(cubin):
    """{kernel: [(start, end, {(file, line)})]} for every backward branch."""
    r = subprocess.run(["nvdisasm", "-g", "-c", cubin], capture_output=True, text=True, check=True)
    funcs = defaultdict(lambda: {"ins": [], "labels": {}})
    fn, loc = None, None
    for line in r.stdout.splitlines():
        m = re.match(r"\.text\.(\w+):", line.strip())
        if m:
            fn, loc = m.group(1), None
            continue
        if fn is None:
            continue
        m = re.match(r'\s*//## File "([^"]+)", line (\d+)', line)
        if m:
            loc = (os.path.basename(m[1]), int(m[2]))
            continue
        m = re.match(r"\s*(\.L_x_\d+):", line)
        if m:
            funcs[fn]["labels"][m[1]] = len(funcs[fn]["ins"])
            continue
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*);", line)
        if m:
            funcs[fn]["ins"].append((m[2], loc))
    out = {}
    for fn, f in funcs.items():
        ls = []
        for i, (text, _) in enumerate(f["ins"]):
            m = re.search(r"\bBRA\b.*`\((\.L_x_\d+)\)", text)
            if m and m[1] in f["labels"] and f["labels"][m[1]] <= i:
                t = f["labels"][m[1]]
                ls.append((t, i, {loc for _, loc in f["ins"][t:i + 1] if loc}))
        out[fn] = ls
    return out


def markers(files):
    ms = []
    for cu in files:
        for no, line in enumerate(open(cu), 1):
            m = re.search(r"//\s*hot-loop:\s*([^,]+),\s*(\S+)", line)
            if m:
                ms.append((os.path.basename(cu), no, m[1].strip(), m[2]))
    return ms


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--archs", default="80,86,89,90")
    ap.add_argument("--loops-arch", default="90")
    ap.add_argument("--keep")
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    archs = a.archs.split(",")
    tmp = a.keep or tempfile.mkdtemp()
    os.makedirs(tmp, exist_ok=True)
    stats = defaultdict(dict)  # kernel -> arch -> stats
    cubins = []
    for cu in a.files:
        inc = os.path.dirname(os.path.abspath(cu))
        for arch in archs:
            out = os.path.join(tmp, f"{os.path.basename(cu)}.sm_{arch}.cubin")
            for k, s in ptxas(cu, arch, out, inc).items():
                stats[k][arch] = s
            if arch == a.loops_arch:
                cubins.append(out)
    print("| kernel | " + " | ".join(f"sm_{x}" for x in archs) + " |")
    print("| --- |" + " --- |" * len(archs))
    for k in sorted(stats):
        cells = []
        for x in archs:
            s = stats[k].get(x)
            if not s:
                cells.append("-")
                continue
            c = f"{s['regs']} r, {s['smem']} B"
            if s["spill_st"] or s["spill_ld"] or s["stack"]:
                c += f", SPILL {s['spill_st']}/{s['spill_ld']} B, stack {s['stack']}"
            cells.append(c)
        print(f"| {k} | " + " | ".join(cells) + " |")
    spills = sum(s["spill_st"] + s["spill_ld"] for k in stats for s in stats[k].values())
    print(f"\n(r: registers per thread; B: static shared memory; spill bytes in all: {spills})\n")
    ms = markers(a.files)
    found = {}
    for cubin in cubins:
        found.update(loops(cubin))
    print(f"| kernel (sm_{a.loops_arch}) | hot loop | SASS instructions per iteration | elements per thread-iteration | per element |")
    print("| --- | --- | --- | --- | --- |")
    for k in sorted(found):
        for (f, line, name, elems) in ms:
            tagged = [(s, e) for (s, e, locs) in found[k] if (f, line) in locs]
            minimal = [(s, e) for (s, e) in tagged
                       if not any((s2, e2) != (s, e) and s <= s2 and e2 <= e for (s2, e2) in tagged)]
            if not minimal:
                continue
            sizes = sorted({e - s + 1 for (s, e) in minimal})
            try:
                per = ", ".join(f"{z / float(eval(elems)):.1f}" for z in sizes) if "/" not in elems else "-"
            except Exception:
                per = "-"
            print(f"| {k} | {name} ({f}:{line}) | {', '.join(map(str, sizes))} | {elems} | {per} |")


if __name__ == "__main__":
    main()
