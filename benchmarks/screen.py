"""Screen throughput: molecules per hour with 1 and 2 Dask workers, same library.

One LocalCluster per worker count (single-threaded worker processes, started
before the clock), the same ANI-1x conformer search per molecule, the same
seed. The ratio is the scaling; the target is >= 1.7x with 2 workers on
2 cores.

    python benchmarks/screen.py [--library molecules/library.smi] [--max-calls 1500]
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time

from distributed import Client, LocalCluster

from ecd_chem.screen import ScreenSettings, read_library, screen


def timed_screen(library, settings, workers):
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=logging.ERROR,
                           env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    with Client(cluster) as client:
        client.run(_warm, settings.calc)           # each worker loads the model once, untimed
        out = tempfile.mkdtemp(prefix=f"ecd-screen-{workers}w-")
        t0 = time.perf_counter()
        rows = screen(library, out, settings, client=client)
        wall = time.perf_counter() - t0
    cluster.close()
    return rows, wall


def _warm(calc):
    import torch

    from ecd_chem.calculators import make_calculator
    torch.set_num_threads(1)
    make_calculator(calc, device="cpu")
    return os.getpid()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--library", default=os.path.join(os.path.dirname(__file__), "..",
                                                      "molecules", "library.smi"))
    ap.add_argument("--max-calls", type=int, default=1500)
    ap.add_argument("--walkers", type=int, default=8)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    settings = ScreenSettings(walkers=args.walkers, max_calls=args.max_calls, device="cpu")
    n = len(read_library(args.library))
    print(f"library {os.path.basename(args.library)}: {n} molecules; ANI-1x, {args.walkers} "
          f"walkers, {args.max_calls} force calls each; {os.cpu_count()} cores")
    rates = {}
    for workers in args.workers:
        rows, wall = timed_screen(args.library, settings, workers)
        done = sum(r["status"] == "done" for r in rows)
        calls = sum(int(r.get("force_calls") or 0) for r in rows)
        rates[workers] = done / wall * 3600
        print(f"{workers} worker(s): {done}/{n} done in {wall:6.1f} s = "
              f"{rates[workers]:7.0f} molecules/hour, {calls / wall:6.0f} force calls/s")
    if 1 in rates:
        for workers, rate in rates.items():
            if workers != 1:
                print(f"scaling {workers} workers / 1 worker: {rate / rates[1]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
