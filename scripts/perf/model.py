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
PARAMS = {"c": 14.0, "h0": 0.0, "h1": 5.0e-6, "g": 2.0e-6, "lat": 2.0e-6, "kmin": 5.0e-6}

WIDTH = {"f32": ("u32", 4, "f32"), "bf16": ("u16", 2, "bf16"), "f16": ("u16", 2, "f16"),
         "f64": ("u64", 8, "f64")}


# ---------------------------------------------------------------------------------------
# SASS figures per kernel

class Kernels:
    def __init__(self, table, arch, cache, root=ROOT):
        self.root = root  # where the `file` sources are read (a scratch copy for a planted bug)
        self.t = tomllib.load(open(table, "rb"))
        self.arch = arch
        self.cache = cache
        self._src = {}
        self._fig = {}
        self._inc_src = {}

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
                path = os.path.join(self.root, s["file"])
                text = open(path).read()
                inc = os.path.dirname(path)
            stem = name + "-" + os.path.basename(path).replace(".cu", "")
            cubin, fname = sass.compile_cubin(text, stem, self.arch, self.cache, inc,
                                              tuple(s.get("defines", [])))
            src = sass.Source(path, text)
            self._src[name] = (src, sass.disasm(cubin), sass.resources(cubin), fname,
                               s.get("marks", {}), inc)
        return self._src[name]

    def figures(self, path, dtype, env, t=None):
        """(kernel name, instr per element, per-row instr per thread, resources)."""
        key = (path, dtype, tuple(sorted(env.items())), t)
        if key not in self._fig:
            self._fig[key] = self._figures(path, dtype, env, t)
        return self._fig[key]

    def _figures(self, path, dtype, env, t):
        k = self.t["kernels"][path]
        src, funcs, res, fname, marks, inc = self.source(k["source"])
        w, _, s = WIDTH[dtype]
        name = t if isinstance(t, str) else k["name"].format(w=w, s=s, t=t)
        if name not in funcs:
            raise LookupError(f"{path}: no kernel {name} in {k['source']} for sm_{self.arch} "
                              f"(update scripts/perf/paths.toml)")
        fn = funcs[name]

        def line(m):
            """(file basename as the line info names it, line number) of mark m."""
            v = marks[m]
            if isinstance(v, dict):
                f = v["file"]
                if (inc, f) not in self._inc_src:
                    self._inc_src[(inc, f)] = sass.Source(os.path.join(inc, f))
                s2 = self._inc_src[(inc, f)]
                return f, s2.find(v["text"], v.get("after"))
            return fname, (src.find(*v) if isinstance(v, list) else src.find(v))

        def loops(m):
            ls = fn.loops_of(*line(m))
            if not ls:
                raise LookupError(f"{name}: no SASS loop holds mark {m!r} (line {line(m)})")
            return ls

        def pick_loop(m, pick="max"):
            sizes = [(e - s + 1, (s, e)) for s, e in loops(m)]
            return (min if pick == "min" else max)(sizes)[1]

        def L(m, pick="max"):
            return fn.count(within=pick_loop(m, pick))

        def C(m, *ms, but=(), pick="max"):
            within = pick_loop(m, pick) if m else None
            yes = {line(x) for x in ms}
            no = {line(x) for x in ([but] if isinstance(but, str) else but)}
            return fn.count(lambda locs: (not yes or bool(locs & yes)) and not (locs & no),
                            within=within)

        def R(a, b, but=()):
            """Instructions whose chain touches a line of [mark a, mark b) of the kernel file."""
            (f, la), (_, lb) = line(a), line(b)
            rng = {(f, x) for x in range(la, lb)}
            no = {line(x) for x in ([but] if isinstance(but, str) else but)}
            return fn.count(lambda locs: bool(locs & rng) and not (locs & no))

        def I(m, pick="max"):
            """Instructions of loop m outside the loops nested in it (its own per-iteration work)."""
            s, e = pick_loop(m, pick)
            inner = [(a, b) for (a, b) in fn.loops if s <= a and b <= e and (a, b) != (s, e)]
            return sum(1 for i in range(s, e + 1)
                       if not fn.ins[i][0].startswith("NOP")
                       and not any(a <= i <= b for a, b in inner))

        def N(m, op, pick="max"):
            s, e = pick_loop(m, pick)
            return sum(1 for o, _ in fn.ins[s:e + 1] if o.split(".")[0] == op)

        g = dict(env, L=L, C=C, N=N, R=R, I=I, size=WIDTH[dtype][1], ve=16 // WIDTH[dtype][1])
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
    eff = min(1.0, w / p["c"])  # a warp issues once per c cycles (ncu, run 4: ~10)
    warp_instr = per_elem * l.elems / 32 / l.items * per_sm  # on the busiest SM
    t_issue = warp_instr / (SCHED * CLOCK * eff)
    t_mem = l.dram / BW + l.l2 / L2_BW
    # Loads in flight: the SMs in use, their resident threads, each with `inflight` bytes
    # outstanding per memory latency.
    sms = min(SMS, l.items)
    t_lat = l.rd / (sms * resident * l.threads * inflight / p["lat"])
    # A launch takes at least kmin on the device (start, ramp, drain).
    t = max(t_issue, t_mem, t_lat, p["kmin"])
    return t, dict(name=name, per_elem=per_elem, blocks=b, t_issue=t_issue, t_mem=t_mem,
                   t_lat=t_lat, bound=["issue", "memory", "latency", "launch"][
                       [t_issue, t_mem, t_lat, p["kmin"]].index(t)])


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
    grid = [dict(c=c, h0=h0, h1=h1, g=g, lat=lat, kmin=kmin)
            for c in [10.0, 12.0, 14.0, 16.0, 18.0]
            for h0 in [0.0, 2e-6, 4e-6, 6e-6]
            for h1 in [1e-6, 2e-6, 3e-6, 4e-6, 5e-6, 6e-6]
            for g in [0.0, 1e-6, 2e-6]
            for lat in [1.5e-6, 2e-6, 2.5e-6]
            for kmin in [0.0, 2e-6, 3e-6, 4e-6, 5e-6]]
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


# ---------------------------------------------------------------------------------------
# The library's kernels: the launches the plan makes (examples/perf_traffic.rs), predicted

OPS = ["weight_dropout", "prune", "mask", "unit_dropout", "nm_2:4_dropout", "backward",
       "grouped_resnet32"]
SHAPES = ["[4096,4096]", "[11008,4096]", "[128,2^20]", "[2^20,9]"]
RESNET32 = [[16, 3, 3, 3]] + [s for (ci, c) in [(16, 16), (16, 32), (32, 64)] for b in range(5)
                              for s in ([c, ci if b == 0 else c, 3, 3], [c, c, 3, 3])] + [[10, 64]]


def parse_shape(t):
    return [2 ** int(x[2:]) if x.startswith("2^") else int(x) for x in t.strip("[]").split(",")]


def read_traffic(path):
    """{(op, shape, dtype): {"scaled", "elems", "launches": [dict]}} from perf_traffic lines."""
    out = {}
    for line in open(path):
        if not line.startswith("launch "):
            continue
        f = line.split()
        op, shape, dt = f[1], f[2], f[3]
        kv = dict(x.split("=", 1) for x in f[4:])
        rec = out.setdefault((op, shape, dt), {"scaled": kv["scaled"], "elems": int(kv["elems"]),
                                               "launches": []})
        rec["launches"].append(dict(
            part=kv.get("part", "op"), elems=int(kv["elems"]), kernel=kv["kernel"], grid=[int(x) for x in kv["grid"].split(",")],
            block=[int(x) for x in kv["block"].split(",")], smem=int(kv["smem"]),
            ld=int(kv["ld"]), st=int(kv["st"]), lds=int(kv["lds"]), sts=int(kv["sts"])))
        # What reaches DRAM: the counted bytes, but no more than the 32-byte sectors the warps'
        # accesses touched (threads of a warp that read the same mask word count its bytes once
        # per thread, its sector once: td_bwd_*, td_unit_apply_* read a bit-mask word per vector
        # or element)
        r = rec["launches"][-1]
        r["ldd"], r["std"] = min(r["ld"], 32 * r["lds"]), min(r["st"], 32 * r["sts"])
    return out


def path_of(kern, kernel):
    import re
    hits = [p for p, k in kern.t["kernels"].items() if re.search(k.get("match", "^$"), kernel)]
    if not hits:
        raise LookupError(f"kernel {kernel}: no path in scripts/perf/paths.toml matches it "
                          f"(add one, with its marks)")
    return hits[0]


def lib_launches(kern, op, shape, dt, rec):
    """Model launches at the full shape from the traced launches at the scaled one."""
    _, size, _ = WIDTH[dt]
    if op == "grouped_resnet32":
        full_elems = sum(math.prod(s) for s in RESNET32)
        rows = sum(s[0] for s in RESNET32)
        d0, n = rows, full_elems / rows
    else:
        d0, n = filters(parse_shape(shape))
        full_elems = d0 * n
    scale = full_elems / rec["elems"]
    pf = 0.0 if op == "prune" else 1 - 0.5 ** 4
    ls, counted, planned = [], 0.0, 0.0
    nl = len(rec["launches"])
    for r in rec["launches"]:
        path = path_of(kern, r["kernel"])
        k = kern.t["kernels"][path]
        threads = r["block"][0] * r["block"][1] * r["block"][2]
        grid = r["grid"][0] * r["grid"][1] * r["grid"][2]
        env = dict(n=n, T=threads, pf=pf, gamma=0.5, passes=0, single=0, scan=0)
        m = __import__("re").search(r"_m(\d+)$", r["kernel"])
        if m:
            env["m"] = int(m.group(1))
            env["pf"] = 1.0  # 2:4: every group of four holds targeted elements
        elems, rl, items = full_elems, n, max(1, round(grid * scale))
        if op == "grouped_resnet32":
            items = max(1, grid)
            if nl > 1:
                # one grouped launch per kind (td_tiny for rows of <= 32 elements, td_block for
                # the rest): the tensors of its kind, whose rows (block) the grid counts
                tiny = "tiny" in r["kernel"]
                kind = [x for x in RESNET32 if (math.prod(x[1:]) <= 32) == tiny]
                rows_k = sum(x[0] for x in kind)
                if kind and (tiny or rows_k == grid):
                    elems = sum(math.prod(x) for x in kind)
                    n = elems / rows_k
                else:
                    elems = full_elems / nl
                env["n"] = n
        if r["part"] == "select":
            # unit dropout's selection over one row of d0 f32 scores, traced at the full d0
            # (examples/perf_traffic.rs): the launch as it ran, on u32 keys
            sel_scale = d0 / r["elems"]
            env["n"] = d0
            sz = WIDTH["f32"][1]
            if path.startswith("lib_long"):
                ld = r["ld"] - (grid * 2048 * 4 if path == "lib_long_count" else 0)
                env["touch"] = round(min(1.0, max(0, ld) / (r["elems"] * sz)), 3)
            cnt_abs = (r["ldd"] + r["std"]) * sel_scale
            l = Launch(path, max(1, round(grid * sel_scale)), threads, r["smem"], d0,
                       cnt_abs, env=env, t=r["kernel"], row_len=d0 / max(1, round(grid * sel_scale)),
                       dtype="f32", rd=r["ldd"] * sel_scale)
            counted += cnt_abs / full_elems
            g = {**env, "size": sz, "ve": 16 // sz}
            planned += eval("(" + k.get("bytes", "2 * size") + ")", {}, g) * d0 / full_elems
            ls.append(l)
            continue
        if path.startswith("lib_long"):
            # the share of the row this launch read (a count pass whose rows are done: none)
            # (every block of a count pass after the first reads its row's 2048-bin histogram
            # of 4-byte counts for the pick: not the row)
            ld = r["ld"] - (grid * 2048 * 4 if path == "lib_long_count" else 0)
            env["touch"] = round(min(1.0, max(0, ld) / (rec["elems"] * size)), 3)
        g = {**env, "size": size, "ve": 16 // size}
        plan_b = eval("(" + k.get("bytes", "2 * size") + ")", {}, g)
        l2_b = eval("(" + k.get("l2", "0") + ")", {}, g)
        rd_b = eval("(" + k.get("rd", "(" + k.get("bytes", "2 * size") + ") / 2") + ")", {}, g)
        cnt_b = (r["ldd"] + r["std"]) / rec["elems"]
        rl = elems / items  # the elements of one block's work item (a row, a tile, a chunk)
        l = Launch(path, items, threads, r["smem"], elems, plan_b * elems, l2=l2_b * elems,
                   env=env, t=r["kernel"], row_len=rl, rd=rd_b * elems)
        cnt_abs = (r["ldd"] + r["std"]) * scale  # this launch's counted bytes at the full shape
        if cnt_b > 0:
            # the counted traffic, less what the plan serves from the L2
            l.dram = max(cnt_abs - l.l2, 0)
            l.rd = max(r["ldd"] * scale - l.l2, 0)
        counted += cnt_abs / full_elems
        planned += (plan_b + l2_b) * elems / full_elems
        ls.append(l)
    return ls, counted, planned, full_elems


def pct(x):
    return f"{x:.0f}" if x >= 10 else f"{x:.1f}"


def predict(kern, traffic, p, budgets_out=None):
    lines, figs = [], []
    for op in OPS:
        for shape in (SHAPES if op != "grouped_resnet32" else ["resnet32"]):
            for dt in ["f32", "bf16"]:
                rec = traffic.get((op, shape, dt))
                if rec is None:
                    continue
                _, size, _ = WIDTH[dt]
                ls, counted, planned, elems = lib_launches(kern, op, shape, dt, rec)
                host = len(ls) + 1
                t, info = op_time(ls, host, kern, dt, p)
                instr = sum(i["per_elem"] * l.elems for i, l in zip(info, ls)) / elems
                moved = counted if counted > 0 else planned
                passes = moved / size
                copy = 2 * size * elems / BW
                sh = shape if shape != "resnet32" else "[resnet32]"
                note = f" (scaled: {rec['scaled']})" if rec["scaled"] != "full" else ""
                if counted > 0:
                    note += f" [counted {counted:.2f} B/elem, plan {planned:.2f}]"
                else:
                    note += " [plan bytes: the emulator counted none]"
                lines.append(f"predict {op} {sh} {dt}: {moved:.2f} B/elem moved ({passes:.1f} "
                             f"passes), {instr:.1f} instr/elem, predicted {t * 1e6:.1f} us = "
                             f"{pct(100 * copy / t)}% of copy{note}")
                figs.append((op, sh, dt, ls, info, moved, passes, instr, elems))
    return lines, figs


# ---------------------------------------------------------------------------------------
# Budgets (benches/budgets.toml): per kernel of each case, bytes and instructions per element

def budget_rows(figs, kern80=None):
    """[(key, kernel, path, bytes per element of the op, instr per element of the kernel's own
    elements on sm_90, on sm_80)] per case and kernel."""
    acc = {}
    for op, sh, dt, ls, info, moved, passes, instr, elems in figs:
        for l, i in zip(ls, info):
            key = f"{op} {sh} {dt} {i['name']}"
            i80 = None
            if kern80 is not None:
                _, e80, r80, _, _ = kern80.figures(l.path, l.dtype or dt, l.env, l.t)
                i80 = e80 + r80 * l.threads / l.row_len
            a = acc.setdefault(key, [i["name"], l.path, 0.0, 0.0, 0.0, 0.0])
            a[2] += (l.dram + l.l2) / elems
            a[3] += i["per_elem"] * l.elems
            a[4] += (i80 or 0.0) * l.elems
            a[5] += l.elems
    return [(k, v[0], v[1], v[2], v[3] / v[5], v[4] / v[5] if kern80 is not None else None)
            for k, v in acc.items()]


def write_budgets(path, rows, reason):
    with open(path, "w") as f:
        f.write("# Budgets of the kernel paths (issue 23), checked by scripts/perf-model.sh in CI:\n"
                "# per case (op, shape, dtype) and kernel, the bytes per element it moves (counted\n"
                "# by the emulator where it counts, else what the launch plan must move) and the\n"
                "# SASS instructions per element on its main path (sm_90, sm_80). CI fails when a\n"
                "# change moves more bytes than the budget or grows instructions per element by\n"
                "# more than 10%. Regenerate deliberately, in its own commit with the reason:\n"
                "#   scripts/perf-model.sh --update-budgets \"why\"\n")
        f.write(f"reason = {reason!r}\n\n")
        for key, kernel, pth, b, i90, i80 in sorted(rows):
            f.write(f"[budget.{key!r}]\n".replace("'", '"'))
            f.write(f'kernel = "{kernel}"\npath = "{pth}"\nbytes_per_elem = {b:.4f}\n'
                    f"passes = {b / WIDTH[key.split()[2]][1]:.2f}\n"
                    f"instr_per_elem_sm90 = {i90:.3f}\n")
            if i80 is not None:
                f.write(f"instr_per_elem_sm80 = {i80:.3f}\n")
            f.write("\n")


def check_budgets(path, rows):
    """Failures (strings) of rows against the committed budgets."""
    bud = tomllib.load(open(path, "rb")).get("budget", {})
    fails, seen = [], set()
    for key, kernel, pth, b, i90, i80 in rows:
        seen.add(key)
        bb = bud.get(key)
        if bb is None:
            fails.append(f"budget: {kernel} in {key.rsplit(' ', 1)[0]}: no budget in "
                         f"benches/budgets.toml (a new or renamed kernel: regenerate the budgets)")
            continue
        if b > bb["bytes_per_elem"] * (1 + 1e-3) + 1e-4:
            fails.append(f"budget: {kernel} in {key.rsplit(' ', 1)[0]}: moves {b:.3f} B/elem, over "
                         f"its budget of {bb['bytes_per_elem']:.3f} B/elem "
                         f"({b / WIDTH[key.split()[2]][1]:.2f} passes over the tensor, budget "
                         f"{bb['passes']:.2f})")
        for arch, v in (("sm90", i90), ("sm80", i80)):
            lim = bb.get(f"instr_per_elem_{arch}")
            if v is None or lim is None or lim <= 0:
                continue
            if v > 1.10 * lim:
                fails.append(f"budget: {kernel} in {key.rsplit(' ', 1)[0]}: {v:.1f} SASS "
                             f"instructions per element on {arch}, {100 * (v / lim - 1):.0f}% over "
                             f"its budget of {lim:.1f} (+10% allowed)")
    cases = {k.rsplit(" ", 1)[0] for k in seen}
    for key in sorted(k for k in set(bud) - seen if k.rsplit(" ", 1)[0] in cases):
        fails.append(f"budget: {bud[key]['kernel']} in {key.rsplit(' ', 1)[0]}: budgeted but not "
                     f"launched any more (a renamed or removed kernel: regenerate the budgets)")
    return fails


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="90")
    ap.add_argument("--cache", default=os.path.join(ROOT, "target", "perf"))
    ap.add_argument("--fit", action="store_true", help="search the calibration parameters")
    ap.add_argument("--traffic", help="examples/perf_traffic.rs output: predict the library")
    ap.add_argument("--prebuild", action="store_true", help="compile every source, both targets")
    ap.add_argument("--kernels-root", default=ROOT, help="read kernels/ from this copy")
    ap.add_argument("--budgets", default=os.path.join(ROOT, "benches/budgets.toml"))
    ap.add_argument("--check", action="store_true", help="fail on a budget overrun")
    ap.add_argument("--update-budgets", metavar="REASON", help="write the budgets")
    a = ap.parse_args()
    table = os.path.join(ROOT, "scripts/perf/paths.toml")
    kern = Kernels(table, a.arch, a.cache, a.kernels_root)
    if a.prebuild:
        from concurrent.futures import ThreadPoolExecutor
        ks = [kern, Kernels(table, "80", a.cache, a.kernels_root)]
        jobs = [(k, s) for k in ks for s in kern.t["sources"] if not (k.arch == "80" and s == "run4")]
        with ThreadPoolExecutor(max_workers=4) as ex:
            list(ex.map(lambda j: j[0].source(j[1]), jobs))
        return
    p = dict(PARAMS)
    if a.fit:
        worst, p = fit(kern)
        print(f"fit: {p} worst ratio {math.exp(worst):.2f}")
    print("model: H200 %d SMs x %d schedulers x %.2f GHz, copy %d GB/s, L2 re-reads %d GB/s; "
          "calibrated on run 4: issue efficiency min(1, w / %.1f) at w warps per scheduler, host "
          "%.0f us + %.0f us per launch, %.1f us between launches, %.1f us the shortest kernel, "
          "memory latency %.2f us"
          % (SMS, SCHED, CLOCK / 1e9, BW / 1e9, L2_BW / 1e9, p["c"], p["h0"] * 1e6,
             p["h1"] * 1e6, p["g"] * 1e6, p["kmin"] * 1e6, p["lat"] * 1e6))
    for op, shape, dt, t, meas in calibration(kern, p):
        print(f"calibration {op} {shape} {dt}: predicted {t:.1f} us, measured {meas:.1f} us "
              f"(run 4), ratio {t / meas:.2f}")
    if a.traffic:
        lines, figs = predict(kern, read_traffic(a.traffic), p)
        print("\n".join(lines))
        if a.check or a.update_budgets:
            kern80 = Kernels(table, "80", a.cache, a.kernels_root)
            rows = budget_rows(figs, kern80)
            if a.update_budgets:
                write_budgets(a.budgets, rows, a.update_budgets)
                print(f"budgets: {len(rows)} written to {a.budgets}")
            fails = check_budgets(a.budgets, rows)
            for f in fails:
                print(f)
            if fails:
                print(f"budgets: FAILED ({len(fails)})")
                sys.exit(1)
            print(f"budgets: {len(rows)} kernel x case figures within benches/budgets.toml")


if __name__ == "__main__":
    main()
