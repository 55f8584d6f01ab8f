#!/usr/bin/env python3
"""Times PyTorch on the loss benches' shapes, for ckbench's PyTorch columns (GPU + torch).

The losses are scripts/parity.py's re-implementations of the reference code (what a PyTorch user
runs today), on the inputs `contrastive_kernels::bench::BenchInputs` builds (n = 2B rows, row i a
view of sample i mod B), in the input dtype, eager and under torch.compile. Median of single-call
CUDA-event timings after warm-up, in microseconds; `nan` where a mode failed (the reason goes to
stderr). Output: a TSV with the header `loss n d dtype pass eager_us compile_us`.

  python3 scripts/torch_bench.py --out torch.tsv [--n 4096,8192] [--d 128] [--dtype bf16,f16]
      [--loss nt_xent,supcon,firm] [--runs 20] [--no-compile]
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from parity import firm_concat_reference, nt_xent_reference, supcon_reference  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}


def make_loss(name, b, device):
    labels = (torch.arange(b, device=device) % 100)
    if name == "nt_xent":
        return lambda x: nt_xent_reference(x, 0.5)
    if name == "supcon":
        return lambda x: supcon_reference(x, labels, 0.1, 0.07)
    if name == "firm":
        firm_labels = torch.where(torch.arange(b, device=device) % 10 == 9, -1, 0)
        return lambda x: firm_concat_reference(x[:b], x[b:], firm_labels, 0.2)
    raise SystemExit(f"--loss: unknown loss {name!r}")


def median_us(fn, runs, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    times.sort()
    return times[len(times) // 2]


def step(loss_fn, x, backward):
    def run():
        if x.grad is not None:
            x.grad = None
        loss = loss_fn(x)
        if backward:
            loss.backward()
    return run


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--n", default="4096,8192")
    p.add_argument("--d", default="128")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--loss", default="nt_xent,supcon,firm")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--no-compile", action="store_true")
    a = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("torch_bench: no CUDA device visible to PyTorch")
    dev = torch.device("cuda", 0)
    rows = ["loss\tn\td\tdtype\tpass\teager_us\tcompile_us"]
    for name in a.loss.split(","):
        for n in map(int, a.n.split(",")):
            for d in map(int, a.d.split(",")):
                for dt in a.dtype.split(","):
                    x = torch.randn(n, d, device=dev, dtype=DTYPES[dt]).requires_grad_()
                    eager = make_loss(name, n // 2, dev)
                    compiled = None
                    if not a.no_compile:
                        try:
                            compiled = torch.compile(eager)
                        except Exception as e:  # noqa: BLE001 - reported, the eager column still runs
                            print(f"torch_bench: torch.compile failed for {name}: {e}", file=sys.stderr)
                    for pass_name, backward in (("fwd", False), ("fwd_bwd", True)):
                        times = []
                        for fn in (eager, compiled):
                            if fn is None:
                                times.append(float("nan"))
                                continue
                            try:
                                if backward:
                                    times.append(median_us(step(fn, x, True), a.runs))
                                else:
                                    with torch.no_grad():
                                        times.append(median_us(step(fn, x, False), a.runs))
                            except Exception as e:  # noqa: BLE001 - e.g. out of memory at large n
                                print(f"torch_bench: {name} n={n} d={d} {dt} {pass_name}: {type(e).__name__}: {e}", file=sys.stderr)
                                times.append(float("nan"))
                                torch.cuda.empty_cache()
                        rows.append(f"{name}\t{n}\t{d}\t{dt}\t{pass_name}\t{times[0]:.3f}\t{times[1]:.3f}")
                        print(rows[-1], flush=True)
    Path(a.out).write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
