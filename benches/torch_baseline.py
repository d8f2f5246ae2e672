"""PyTorch baseline for the GPU benchmark: targeted dropout the way a user would write it
(per-row kthvalue on |w|, a uniform draw, torch.where), timed like examples/gpu_bench.rs:
CUDA events around each call, 3 warm-up calls, the median of 30, inputs rotated over
enough copies to leave the L2. GB/s counts one read and one write of the tensor.

usage: python3 benches/torch_baseline.py results.csv
"""
import sys
import torch

ITERS = 30


def kth_threshold(a, k):
    try:
        return a.kthvalue(k, dim=1, keepdim=True).values
    except RuntimeError:
        # Some dtypes lack kthvalue on CUDA: the k smallest by topk.
        return a.topk(k, dim=1, largest=False).values[:, -1:]


def weight_dropout(w, gamma, alpha):
    w2 = w.reshape(w.shape[0], -1)
    k = int(gamma * w2.shape[1])
    a = w2.abs()
    targeted = a <= kth_threshold(a, k)
    drop = targeted & (torch.rand_like(w2, dtype=torch.float32) < alpha)
    return torch.where(drop, torch.zeros_like(w2), w2).reshape(w.shape)


def prune_weights(w, gamma):
    w2 = w.reshape(w.shape[0], -1)
    k = int(gamma * w2.shape[1])
    a = w2.abs()
    return torch.where(a <= kth_threshold(a, k), torch.zeros_like(w2), w2).reshape(w.shape)


def unit_dropout(w, gamma, alpha):
    w2 = w.reshape(w.shape[0], -1)
    k = int(gamma * w2.shape[0])
    norms = w2.float().pow(2).sum(1)
    idx = norms.topk(k, largest=False).indices
    targeted = torch.zeros(w2.shape[0], dtype=torch.bool, device=w.device)
    targeted[idx] = True
    drop = targeted & (torch.rand(w2.shape[0], device=w.device) < alpha)
    return torch.where(drop[:, None], torch.zeros_like(w2), w2).reshape(w.shape)


def time_ms(f, xs):
    for i in range(3):
        f(xs[i % len(xs)])
    torch.cuda.synchronize()
    times = []
    for i in range(ITERS):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        f(xs[(i + 3) % len(xs)])
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[ITERS // 2]


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "torch_baseline.csv"
    dev = torch.device("cuda")
    n = 1 << 28
    src, dst = torch.ones(n, device=dev), torch.empty(n, device=dev)
    ms = time_ms(lambda x: dst.copy_(x), [src])
    ceiling = 2 * n * 4 / (ms * 1e-3)
    del src, dst
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}: copy ceiling {ceiling / 1e9:.0f} GB/s")
    shapes = [
        ("resnet32-like [32x288]", (32, 32, 3, 3)),
        ("resnet32-like [64x576]", (64, 64, 3, 3)),
        ("resnet32-like [128x1152]", (128, 128, 3, 3)),
        ("[4096x4096]", (4096, 4096)),
        ("[11008x4096]", (11008, 4096)),
        ("[128x2^20]", (128, 1 << 20)),
        ("[2^20x9]", (1 << 20, 9)),
    ]
    ops = [
        ("weight_dropout", lambda w: weight_dropout(w, 0.5, 0.5)),
        ("prune_weights", lambda w: prune_weights(w, 0.5)),
        ("unit_dropout", lambda w: unit_dropout(w, 0.5, 0.5)),
    ]
    with open(out, "w") as f:
        f.write("op,shape,dtype,ms,gbps,share\n")
        for name, shape in shapes:
            for dt, dtn in [(torch.float32, "F32"), (torch.bfloat16, "BF16")]:
                numel = 1
                for s in shape:
                    numel *= s
                nbytes = numel * (4 if dt == torch.float32 else 2)
                copies = max(2, min(64, -(-(256 << 20) // nbytes)))
                xs = [torch.randn(shape, device=dev).to(dt) for _ in range(copies)]
                for op, fn in ops:
                    try:
                        ms = time_ms(fn, xs)
                    except Exception as e:  # report, do not stop the run
                        print(f"torch {op} {name} {dtn} fails: {str(e).splitlines()[0]}")
                        f.write(f"{op},{name},{dtn},nan,nan,nan\n")
                        continue
                    gbps = 2 * nbytes / (ms * 1e-3) / 1e9
                    share = 100 * 2 * nbytes / (ms * 1e-3) / ceiling
                    print(f"torch {op:15} {name:26} {dtn:5} {ms:9.4f} ms {gbps:6.0f} GB/s {share:5.1f}%")
                    f.write(f"{op},{name},{dtn},{ms:.4f},{gbps:.0f},{share:.1f}\n")
                del xs
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
