"""Joins the crate's GPU benchmark CSV with the PyTorch baseline CSV into the summary table.
usage: python3 benches/summary.py gpu_bench.csv torch_baseline.csv"""
import csv
import sys

ours = list(csv.DictReader(open(sys.argv[1])))
torch = {(r["op"], r["shape"], r["dtype"]): r for r in csv.DictReader(open(sys.argv[2]))}
print(f"{'op':15} {'shape':26} {'dtype':5} {'ms':>9} {'GB/s':>6} {'copy%':>6} {'torch ms':>9} {'x torch':>8} {'candle ms':>9}")
for r in ours:
    t = torch.get((r["op"], r["shape"], r["dtype"]), {})
    tms = float(t.get("ms", "nan"))
    speed = tms / float(r["ms"])
    print(f"{r['op']:15} {r['shape']:26} {r['dtype']:5} {float(r['ms']):9.4f} {r['gbps']:>6} {r['share']:>6} {tms:9.4f} {speed:8.1f} {r['candle_ms']:>9}")
