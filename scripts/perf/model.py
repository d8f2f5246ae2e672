#!/usr/bin/env python3
"""The kernels' time on an H200, predicted without a GPU (issue 23), and the CI budgets.

    time of an op = max(host floor, sum over its launches of (kernel + gap))
    kernel        = max(bytes / 4160 GB/s (+ L2 re-reads / L2 rate),
                        instructions / issue rate at the launch's occupancy, wave-quantised)

- bytes: what each launch must move, from the launch plan (`plan_bytes`); where the emulator's
  counted traffic is given (--traffic FILE, lines of examples/perf_traffic.rs), the counted
  bytes per element replace them and both are printed.
- instructions: SASS instructions per element on the kernel's main path, from the fatbin's
  target (scripts/perf/sass.py, the paths of scripts/perf/paths.toml), plus the per-row
  fixed work spread over the row.
- issue rate: 132 SMs x 4 schedulers x 1.98 GHz, times an efficiency w / (w + c) of the warps
  per scheduler w that the occupancy (registers, shared memory, threads: the launchability
  check's figures from cuobjdump) and the grid allow; the busiest SM's share of the blocks
  (wave quantisation) sets the time.
- host floor h0 + h1 x launches (candle's dispatch, allocation, cudarc): small tensors are
  host-bound; a gap g per launch on the GPU.
c, h0, h1, g are calibrated on H200 run 4 (v4, benches/results/h200-run4-gpu_bench.csv).
"""
import argparse
import functools
import math
import os
import random
import struct
import subprocess
import sys
import tomllib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sass  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

# The H200 of run 4 (and its copy ceiling measured in that run).
SMS, SCHED, CLOCK = 132, 4, 1.98e9
BW = 4160e9            # bytes read + written per second (run 4's crate copy ceiling)
L2_BW = 10e12          # L2 re-reads (the long-row passes after the first): an assumption
L2_BYTES = 60 * 1024 * 1024  # run 4's row groups of 7 rows of 4 MiB imply 56..64 MB
REGS_SM, SMEM_SM, THREADS_SM, BLOCKS_SM = 65536, 228 * 1024, 2048, 32
# Calibrated on run 4 (see calibrate()); printed with every run.
PARAMS = {"c": 3.0, "h0": 5.0e-6, "h1": 3.0e-6, "g": 1.0e-6, "lat": 1.0e-6}

WIDTH = {"f32": ("u32", 4, "f32"), "bf16": ("u16", 2, "bf16"), "f16": ("u16", 2, "f16"),
         "f64": ("u64", 8, "f64")}


# ---------------------------------------------------------------------------------------
# SASS figures per kernel

class Kernels:
    def __init__(self, table, arch, cache):
        self.t = tomllib.load(open(table, "rb"))
        self.arch = arch
        self.cache = cache
        self._src = {}
        self._fig = {}

    def source(self, name):
        if name not in self._src:
            s = self.t["sources"][name]
            if "git" in s:
                rev, path = s["git"].split(":", 1)
                text = subprocess.run(["git", "-C", ROOT, "show", s["git"]], capture_output=True,
                                      text=True, check=True).stdout
                inc = os.path.join(self.cache, "inc-" + rev)
                os.makedirs(inc, exist_ok=True)
                for f in subprocess.run(["git", "-C", ROOT, "ls-tree", "--name-only", rev,
                                         os.path.dirname(path) + "/"], capture_output=True,
                                        text=True, check=True).stdout.split():
                    if f.endswith((".cuh", ".h")):
                        open(os.path.join(inc, os.path.basename(f)), "w").write(
                            subprocess.run(["git", "-C", ROOT, "show", f"{rev}:{f}"],
                                           capture_output=True, text=True).stdout)
            else:
                path = os.path.join(ROOT, s["file"])
                text = open(path).read()
                inc = os.path.dirname(path)
            stem = name + "-" + os.path.basename(path).replace(".cu", "")
            cubin, fname = sass.compile_cubin(text, stem, self.arch, self.cache, inc,
                                              tuple(s.get("defines", [])))
            src = sass.Source(path, text)
            self._src[name] = (src, sass.disasm(cubin), sass.resources(cubin), fname,
                               s.get("marks", {}))
        return self._src[name]

    def figures(self, path, dtype, env, t=None):
        """(kernel name, instr per element, per-row instr per thread, resources)."""
        key = (path, dtype, tuple(sorted(env.items())), t)
        if key not in self._fig:
            self._fig[key] = self._figures(path, dtype, env, t)
        return self._fig[key]

    def _figures(self, path, dtype, env, t):
        k = self.t["kernels"][path]
        src, funcs, res, fname, marks = self.source(k["source"])
        w, _, s = WIDTH[dtype]
        name = k["name"].format(w=w, s=s, t=t)
        if name not in funcs:
            raise LookupError(f"{path}: no kernel {name} in {k['source']} for sm_{self.arch} "
                              f"(update scripts/perf/paths.toml)")
        fn = funcs[name]

        def line(m):
            v = marks[m]
            return src.find(*v) if isinstance(v, list) else src.find(v)

        def loops(m):
            ls = fn.loops_of(fname, line(m))
            if not ls:
                raise LookupError(f"{name}: no SASS loop holds mark {m!r} (line {line(m)})")
            return ls

        def pick_loop(m, pick="max"):
            ls = loops(m)
            sizes = [(e - s + 1, (s, e)) for s, e in ls]
            return (min if pick == "min" else max)(sizes)[1]

        def L(m, pick="max"):
            s, e = pick_loop(m, pick)
            return fn.count(within=(s, e))

        def C(m, *ms, pick="max"):
            within = pick_loop(m, pick) if m else None
            lines = {(fname, line(x)) for x in ms}
            if not ms:
                return fn.count(within=within)
            return fn.count(lambda locs: bool(locs & lines), within=within)

        def N(m, op, pick="max"):
            s, e = pick_loop(m, pick)
            return sum(1 for o, _ in fn.ins[s:e + 1] if o.split(".")[0] == op)

        g = dict(env, L=L, C=C, N=N, size=WIDTH[dtype][1], ve=16 // WIDTH[dtype][1])
        elem = eval("(" + k["elem"] + ")", {}, g)
        row = eval("(" + k.get("row", "0") + ")", {}, g)
        inflight = eval("(" + k.get("inflight", "16") + ")", {}, g)
        return name, elem, row, res[name], inflight


# ---------------------------------------------------------------------------------------
# Data: the benchmark's rows (randn), the v4 radix select's passes on them

def keys(dtype, n, rng):
    out = []
    for _ in range(n):
        x = rng.gauss(0.0, 1.0)
        b = struct.unpack("<I", struct.pack("<f", x))[0]
        if dtype == "bf16":
            # round to nearest even, as candle's to_dtype
            b = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) & 0xFFFF
            out.append(b & 0x7FFF)
        else:
            out.append(b & 0x7FFFFFFF)
    return out


@functools.lru_cache(maxsize=None)
def v4_select_stats(dtype, n, k, rows=4, seed=1):
    """Average passes, early exits and tie scans of run 4's tdw_block on randn rows."""
    rng = random.Random(seed)
    bits = 16 if dtype == "bf16" else 32
    P = S = T = 0
    for _ in range(rows):
        ks = keys(dtype, n, rng)
        if k == n:
            continue
        ref = ks[0]
        diff = 0
        for x in ks:
            diff |= x ^ ref
        top = diff.bit_length()
        lowm = (1 << top) - 1
        prefix, him = ref & ~lowm, ((1 << bits - 1) - 1) & ~lowm
        r = k - 1
        take = ties = None
        while top > 0:
            lo = max(top - 8, 0)
            dm = (1 << (top - lo)) - 1
            hist = [0] * 256
            for x in ks:
                if x & him == prefix:
                    hist[(x >> lo) & dm] += 1
            P += 1
            acc = 0
            for b, h in enumerate(hist):
                if r < acc + h:
                    break
                acc += h
            r -= acc
            prefix |= b << lo
            him |= dm << lo
            top = lo
            if top == 0:
                take, ties = r + 1, h
                break
            if h == 1:
                S += 1
                take, ties = 1, 1
                break
        if take is not None and take < ties:
            T += 1
    return P / rows, S / rows, T / rows


# ---------------------------------------------------------------------------------------
# Run 4's launch plan (src/cuda.rs at eff97f4), per op: launches with their work

def filters(shape):
    return shape[0], math.prod(shape[1:])


def targeted(gamma, n):
    return min(int(math.floor(gamma * n)), n)


class Launch:
    def __init__(self, path, items, threads, dyn, elems, dram, l2=0, env=None, t=None,
                 row_len=None, dtype=None, rd=None):
        self.dtype = dtype
        self.path, self.items, self.threads, self.dyn = path, items, threads, dyn
        self.elems, self.dram, self.l2, self.env, self.t = elems, dram, l2, env or {}, t
        self.rd = rd if rd is not None else dram / 2  # DRAM bytes read (default: half)
        self.row_len = row_len


def run4_select(dtype, rows, n, gamma, pf, vals_bytes=True):
    """Launches of run 4's select_rows over [rows, n] (values out)."""
    _, size, _ = WIDTH[dtype]
    k = targeted(gamma, n)
    base = dict(n=n, T=256, pf=pf, gamma=gamma)
    if n <= 32:
        stride = n | 1
        return [Launch("run4_tiny", math.ceil(rows / 256), 256, 256 * stride * size,
                       rows * n, 2 * rows * n * size, env=dict(base, passes=0, single=0, scan=0),
                       row_len=256 * n)], 1
    if n * size <= 64 * 1024:
        p, s, t = v4_select_stats(dtype, n, k)
        return [Launch("run4_block", rows, 256, math.ceil(n / 4) * 4 * size, rows * n,
                       2 * rows * n * size, env=dict(base, passes=p, single=s, scan=t),
                       row_len=n)], 1
    passes = size
    chunks = math.ceil(n / 4096)
    group = max(1, min((L2_BYTES // 2) // (n * size), rows, 65535))
    ls, launches = [], 1  # the histograms' alloc_zeros (a memset)
    r0 = 0
    while r0 < rows:
        g = min(group, rows - r0)
        env = dict(base, passes=passes, single=0, scan=1 if dtype == "bf16" else 0)
        for p in range(passes):
            ls.append(Launch("run4_long_hist", chunks * g, 256, 0, g * n,
                             g * n * size if p == 0 else 0, l2=0 if p == 0 else g * n * size,
                             rd=g * n * size if p == 0 else 0,
                             env=dict(env, passes=p + 1), row_len=4096))
        ls.append(Launch("run4_long_apply", chunks * g, 256, 0, g * n, g * n * size,
                         l2=g * n * size, rd=0, env=env, row_len=4096))
        launches += passes + 1
        r0 += g
    return ls, launches


def run4_op(op, shape, dtype):
    """(launches, host launches) of an op of run 4's benchmark at gamma = alpha = 0.5."""
    d0, n = filters(shape)
    _, size, _ = WIDTH[dtype]
    if op in ("weight_dropout", "prune"):
        pf = 1 - 0.5 ** 4 if op == "weight_dropout" else 0.0
        return run4_select(dtype, d0, n, 0.5, pf)
    if op == "unit_dropout":
        # scores (f32 accumulators), the select over one row of d0 scores (u8 mask, no values:
        # the bytes are the scores), unit_apply; alloc_zeros of the mask and the scores.
        ls = []
        if n <= 32:
            ls.append(Launch("run4_unit_scores_tiny", math.ceil(d0 / 256), 256, 0, d0 * n,
                             d0 * n * size + 4 * d0, env=dict(n=n), row_len=256 * n,
                             rd=d0 * n * size))
        else:
            ls.append(Launch("run4_unit_scores_block", min(d0, SMS * 8), 256, 0, d0 * n,
                             d0 * n * size + 4 * d0, env=dict(n=n), row_len=n,
                             rd=d0 * n * size))
            ls[-1].items = d0
        sel, hl = run4_select("f32", 1, d0, 0.5, 1 - 0.5 ** 4)
        for s in sel:
            s.dram = s.dram * 5 // 8
            s.dtype = "f32"  # reads 4-byte scores, writes a 1-byte mask
        ls += sel
        kept = 1 - 0.5 * 0.5  # a quarter of the units dropped: their reads are skipped
        ls.append(Launch("run4_unit_apply", math.ceil(d0 * n / 4 / 256), 256, 0, d0 * n,
                         (kept + 1) * d0 * n * size + d0, env=dict(n=n), row_len=1024,
                         rd=kept * d0 * n * size))
        return ls, 2 + hl + 2
    raise KeyError(op)


# ---------------------------------------------------------------------------------------
# Occupancy and time

def blocks_per_sm(res, threads, dyn):
    regs = res["REG"]
    per_warp = -(-regs * 32 // 256) * 256
    warps = -(-threads // 32)
    by_regs = REGS_SM // (per_warp * warps) if regs else BLOCKS_SM
    smem = res["SHARED"] + dyn
    by_smem = SMEM_SM // smem if smem else BLOCKS_SM
    return max(0, min(by_regs, by_smem, THREADS_SM // threads, BLOCKS_SM))


def kernel_time(l, kern, dtype, p):
    name, elem, row, res, inflight = kern.figures(l.path, l.dtype or dtype, l.env, l.t)
    per_elem = elem + row * l.threads / l.row_len
    b = blocks_per_sm(res, l.threads, l.dyn)
    if b == 0:
        raise ValueError(f"{name}: does not fit on an SM ({l.threads} threads, {l.dyn} B)")
    per_sm = math.ceil(l.items / SMS)            # the busiest SM's blocks (wave quantisation)
    resident = min(b, per_sm)
    w = resident * l.threads / 32 / SCHED        # warps per scheduler
    eff = w / (w + p["c"])
    warp_instr = per_elem * l.elems / 32 / l.items * per_sm  # on the busiest SM
    t_issue = warp_instr / (SCHED * CLOCK * eff)
    t_mem = l.dram / BW + l.l2 / L2_BW
    # Loads in flight: the SMs in use, their resident threads, each with `inflight` bytes
    # outstanding per memory latency.
    sms = min(SMS, l.items)
    t_lat = l.rd / (sms * resident * l.threads * inflight / p["lat"])
    t = max(t_issue, t_mem, t_lat)
    return t, dict(name=name, per_elem=per_elem, blocks=b, t_issue=t_issue, t_mem=t_mem,
                   t_lat=t_lat, bound=["issue", "memory", "latency"][[t_issue, t_mem, t_lat].index(t)])


def op_time(launches, host, kern, dtype, p):
    gpu, info = 0.0, []
    for l in launches:
        t, i = kernel_time(l, kern, dtype, p)
        gpu += t + p["g"]
        info.append(i)
    return max(p["h0"] + p["h1"] * host, p["h1"] + gpu), info


# ---------------------------------------------------------------------------------------

RUN4_OPS = {"weight_dropout": "weight_dropout", "prune_weights": "prune",
            "unit_dropout": "unit_dropout"}


def shape_of(s):
    s = s.replace("resnet32-like ", "").strip("[]")
    a, b = s.split("x")
    ev = lambda t: 2 ** int(t[2:]) if t.startswith("2^") else int(t)
    return [ev(a), ev(b)]


def spell(shape_text):
    return "[" + shape_text.replace("resnet32-like ", "").strip("[]").replace("x", ",") + "]"


def run4_rows():
    path = os.path.join(ROOT, "benches/results/h200-run4-gpu_bench.csv")
    rows = []
    for line in open(path).read().splitlines()[1:]:
        op, shape, dt, ms = line.split(",")[:4]
        rows.append((RUN4_OPS[op], shape, dt.lower(), float(ms) * 1e3))
    return rows


def calibration(kern, p, quiet=False):
    out = []
    for op, shape, dt, meas in run4_rows():
        ls, host = run4_op(op, shape_of(shape), dt)
        t, _ = op_time(ls, host, kern, dt, p)
        out.append((op, spell(shape), dt, t * 1e6, meas))
    return out


def fit(kern):
    """Grid search of c, h0, h1, g: the smallest worst |log(predicted / measured)|."""
    cache = {}
    best = None
    rows = run4_rows()
    # the per-launch figures do not depend on the parameters except through c: precompute
    grid = [dict(c=c, h0=h0, h1=h1, g=g, lat=lat)
            for c in [1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0]
            for h0 in [2e-6, 4e-6, 6e-6, 8e-6]
            for h1 in [1e-6, 2e-6, 3e-6, 4e-6, 5e-6, 6e-6]
            for g in [0.0, 0.5e-6, 1e-6, 2e-6]
            for lat in [0.5e-6, 0.75e-6, 1e-6, 1.5e-6, 2e-6]]
    ops = [(run4_op(op, shape_of(shape), dt), dt, meas) for op, shape, dt, meas in rows]
    for p in grid:
        worst = 0
        for (ls, host), dt, meas in ops:
            t, _ = op_time(ls, host, kern, dt, p)
            worst = max(worst, abs(math.log(t * 1e6 / meas)))
            if best is not None and worst >= best[0]:
                break
        if best is None or worst < best[0]:
            best = (worst, p)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="90")
    ap.add_argument("--cache", default=os.path.join(ROOT, "target", "perf"))
    ap.add_argument("--fit", action="store_true", help="search the calibration parameters")
    a = ap.parse_args()
    kern = Kernels(os.path.join(ROOT, "scripts/perf/paths.toml"), a.arch, a.cache)
    p = dict(PARAMS)
    if a.fit:
        worst, p = fit(kern)
        print(f"fit: {p} worst ratio {math.exp(worst):.2f}")
    for op, shape, dt, t, meas in calibration(kern, p):
        print(f"calibration {op} {shape} {dt}: predicted {t:.1f} us, measured {meas:.1f} us "
              f"(run 4), ratio {t / meas:.2f}")


if __name__ == "__main__":
    main()
