#!/usr/bin/env python3
"""Static SASS instruction counts per phase of the v5 kernel (and v4 for reference).

usage: nvcc -cubin -O3 -std=c++17 -lineinfo -arch=sm_90 -Ikernels -o weight.cubin kernels/weight.cu
       nvdisasm -g -c weight.cubin > weight.sass;  python3 dev/cuda/sass_count.py weight.sass kernels/weight.cu

Instructions are attributed to the phase of the last kernel-body source line seen before them
(helpers and the `each` lambda inherit the phase of their caller). Phases are found from
comment markers in the source, so the script follows the file as it changes.
"""
import re, sys
from collections import Counter, OrderedDict

sass, src = sys.argv[1], sys.argv[2]
lines = open(src).read().split('\n')
def find(pat, start=0):
    for i in range(start, len(lines)):
        if pat in lines[i]:
            return i + 1
    raise SystemExit('marker not found: ' + pat)
k0 = find('__device__ __forceinline__ void td_block(')
marks = OrderedDict([
    ('prologue', k0), ('load', find('// 2. Zero the histogram', k0)),
    ('lambda', find('auto each = [&]', k0)),
    ('count', find('// 3. Selection', k0)), ('pick11', find('pick<T, NBINS>(sm.hist, k, sm)', k0)),
    ('refine', find('// Rare: more than CAP', k0)), ('compact', find('// Compact the candidates', k0)),
    ('pass8', find('// 8-bit passes over', k0)), ('warp', find('// One warp: gather', k0)),
    ('output', find('// 4. Targeting, draws', k0)), ('maskwr', find('// 5. The row', k0)),
    ('end', find('// Tiny rows (n <= TD_TINY_ROW)', k0)),
])
names = list(marks)
def phase_of(ln):
    if ln < k0 or ln >= marks['end']:
        return None
    ph = None
    for nm in names[:-1]:
        if ln >= marks[nm]:
            ph = nm
    return None if ph == 'lambda' else ph

funcs = OrderedDict()
cur, ph, ln = None, 'prologue', 0
for l in open(sass):
    m = re.match(r'\s*\.text\.(\S+):', l)
    if m:
        cur = m.group(1); funcs[cur] = Counter(); ph = 'prologue'; continue
    m = re.search(r'//## File ".*", line (\d+)', l)
    if m:
        p = phase_of(int(m.group(1)))
        if p: ph = p
        continue
    if cur and re.match(r'\s*/\*[0-9a-f]{4,}\*/\s+[@A-Z]', l):
        op = re.sub(r'^\s*/\*[0-9a-f]+\*/\s+(@!?U?P\w+\s+)?', '', l).split()[0]
        if op.startswith('NOP'): continue
        funcs[cur][ph] += 1
        funcs[cur]['_total'] += 1
        funcs[cur]['op:' + op.split('.')[0]] += 1
for f, c in funcs.items():
    if 'tdw5' not in f and 'td_bwd' not in f and 'tdw_block' not in f: continue
    print(f, 'total', c['_total'])
    if 'tdw5' in f:
        print('   ' + '  '.join('%s=%d' % (p, c[p]) for p in names[:-1] if p != 'lambda'))
    ops = sorted(((v, k[3:]) for k, v in c.items() if k.startswith('op:')), reverse=True)[:14]
    print('   ops: ' + ' '.join('%s:%d' % (o, v) for v, o in ops))
