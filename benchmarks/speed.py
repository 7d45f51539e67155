"""Issue 5's speed and memory table, measured side by side in one run on 2 CPU threads:

1. training throughput (coordinates per second) of sparse dispatch against the dense form (every
   expert on every coordinate, mixed by the gates) for 4, 8 and 16 experts, at the widths the
   brain template gets at 256x;
2. the time to decode a 256^3 volume (a 256x model);
3. the peak memory of `moec compress` on a 512^3 int16 volume (a separate process, measured by the
   kernel's peak resident set size).

Prints a table and writes benchmarks/results/speed.json.

    python benchmarks/speed.py [--skip-memory]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import ROOT, brain, save, table

from codec import pack, pipeline
from codec.decode import reconstruct
from codec.model import MoEC
from codec.phantom import phantom_arrays
from codec.train import TrainConfig
from codec.volume import from_array, save_volume

THREADS = 2
BATCH = 1 << 15


def dense_values(model: MoEC, coords: torch.Tensor) -> torch.Tensor:
    """The dense form: every expert on every coordinate, the top-k gates as mixing weights.

    It exists only as a baseline here (and, written separately, as a reference in the tests)."""
    feats = model.features(coords)
    routing = model.route(coords, feats)
    n = model.config.experts
    gates = torch.zeros(coords.shape[0], n).scatter(1, routing.choice, routing.weights)
    every = model.experts.run_all(feats)  # (N, B, width)
    return model.decoder((gates.t().unsqueeze(2) * every).sum(0))


def throughput(model: MoEC, dense: bool, steps: int = 12) -> float:
    """Training coordinates per second (forward, backward, Adam), after two warm-up steps."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(BATCH, generator=generator)
    coords = torch.rand(BATCH, 3, generator=generator) * 2 - 1

    def step() -> None:
        optimizer.zero_grad()
        values = dense_values(model, coords) if dense else model(coords).values
        torch.nn.functional.mse_loss(values[:, 0], target).backward()
        optimizer.step()

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * BATCH / (time.perf_counter() - start)


def dispatch_rows(volume) -> list[dict]:
    rows = []
    for experts in (4, 8, 16):
        plan = pipeline.plan(volume, pipeline.Settings(ratio=256, experts=experts))
        model = MoEC(plan.model, seed=0)
        model.gate_gradient = 0.1
        sparse = throughput(model, dense=False)
        dense = throughput(model, dense=True)
        rows.append({"experts": experts, "expert_width": plan.model.expert_width,
                     "parameters": plan.model.parameter_count(), "sparse": sparse, "dense": dense,
                     "speedup": sparse / dense})
        print(f"  {experts} experts: sparse {sparse:,.0f}/s, dense {dense:,.0f}/s ({sparse / dense:.1f}x)", flush=True)
    return rows


def decode_row() -> dict:
    shape = (256, 256, 256)
    volume = from_array(np.zeros(shape, np.float32) + np.arange(256, dtype=np.float32), dtype=np.int16)
    plan = pipeline.plan(volume, pipeline.Settings(ratio=256))
    fitter = pipeline.new_fitter(volume, plan, TrainConfig(steps=1))
    data = pipeline.encode(fitter, plan)
    moec = pack.decode(data)
    start = time.perf_counter()
    recon = reconstruct(moec)
    seconds = time.perf_counter() - start
    return {"shape": "256^3", "parameters": plan.model.parameter_count(), "seconds": seconds,
            "voxels_per_second": recon.labels.size / seconds}


def memory_row() -> dict:
    """Peak RSS of `moec compress` on a 512^3 int16 volume, in its own process."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "big.nii"
        hu, _ = phantom_arrays((512, 512, 512))
        save_volume(from_array(hu, dtype=np.int16), source)
        del hu
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        start = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "codec.cli", "compress", str(source), "-o", str(Path(tmp) / "big.moec"),
                              "--ratio", "1024", "--steps", "30", "--threads", str(THREADS), "--quiet"],
                             capture_output=True, text=True, cwd=ROOT)
        seconds = time.perf_counter() - start
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if run.returncode != 0:
        raise SystemExit(f"moec compress failed: {run.stderr}")
    return {"shape": "512^3 int16", "peak_gib": max(peak_kib, before) / 2 ** 20, "seconds": seconds,
            "output": run.stdout.strip().splitlines()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-memory", action="store_true", help="skip the 512^3 memory run (a few minutes)")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    volume = brain()
    print("training throughput, sparse vs dense dispatch (brain template widths at 256x):", flush=True)
    dispatch = dispatch_rows(volume)
    print(table(dispatch, [("experts", "experts", ""), ("expert width", "expert_width", ""),
                           ("parameters", "parameters", ","), ("sparse coords/s", "sparse", ",.0f"),
                           ("dense coords/s", "dense", ",.0f"), ("sparse / dense", "speedup", ".2f")]))
    decode = decode_row()
    print(f"\ndecode of a 256^3 volume: {decode['seconds']:.2f} s ({decode['voxels_per_second']:,.0f} voxels/s)")
    memory = None if args.skip_memory else memory_row()
    if memory:
        print(f"peak memory of moec compress on a 512^3 int16 volume: {memory['peak_gib']:.2f} GiB "
              f"({memory['seconds']:.0f} s with 30 steps)")
    path = save("speed", {"threads": THREADS, "batch": BATCH, "dispatch": dispatch, "decode": decode,
                          "memory": memory, "note": "decode timed with an untrained 256x model"})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
