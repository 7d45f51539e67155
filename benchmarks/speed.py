"""The speed and memory table, measured side by side in one run on 2 CPU threads:

1. training throughput (coordinates per second) of sparse dispatch against the dense form (every
   expert on every coordinate, mixed by the gates) for 4, 8 and 16 experts, at the widths the
   brain template gets at 256x;
2. what the current forward pass gained over the first one written: the
   same model and batch through a boolean mask per expert with omega_0 applied to the activations
   (before), through the grouped dispatch with omega_0 still on the activations, and through the
   grouped dispatch with omega_0 folded into the weights (now); then batch sizes and thread counts;
3. the time to decode a 256^3 volume at 256x (uint8 and int16), and the chunk size's effect; the
   development chest CT (512 x 512 x 61) at 256x, 1024x and 4096x with the default settings;
4. the peak memory of `moec compress` on a 512^3 int16 volume (a separate process, measured by the
   kernel's peak resident set size);
5. a cubic training step on the chest CT, its grid's refinement read whole against the default
   (a large level read at the batch's points), on the CT as given and resampled to thin slices.

Prints a table and writes benchmarks/results/speed.json.

    python benchmarks/speed.py [--skip-memory | --decode-only | --dispatch-only | --memory-only |
        --training-only]
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
from common import CT, ROOT, brain, save, table

from codec import pipeline
from codec.decode.reconstruct import DEFAULT_CHUNK, reconstruct
from codec.format import moecfile
from codec.io.load import load_volume, save_volume
from codec.io.phantom import phantom_arrays
from codec.io.volume import from_array
from codec.model import MoEC, latents
from codec.settings import TrainConfig

THREADS = 2
BATCH = TrainConfig.batch_size


def dense_values(model: MoEC, coords: torch.Tensor) -> torch.Tensor:
    """The dense form: every expert on every coordinate, the top-k gates as mixing weights.

    It exists only as a baseline here (and, written separately, as a reference in the tests)."""
    feats = model.features(coords)
    routing = model.route(coords, feats)
    n = model.config.experts
    gates = torch.zeros(coords.shape[0], n).scatter(1, routing.choice, routing.weights)
    every = model.experts.run_all(feats)  # (N, B, width)
    return model.decoder((gates.t().unsqueeze(2) * every).sum(0))


def first_values(model: MoEC, coords: torch.Tensor, fold_omega: bool) -> torch.Tensor:
    """The sparse forward pass as first written: a boolean mask per expert, omega_0 multiplied into
    the (batch x width) activations; or the same loop with omega_0 folded into the weights."""
    feats = model.features(coords)
    routing = model.route(coords, feats)
    stack, omega = model.experts, model.experts.omega0
    hidden = feats.new_zeros(coords.shape[0], model.config.expert_width)
    for e in range(model.config.experts):
        mask = routing.choice[:, 0] == e
        x = feats[mask]
        for layer in range(stack.layers):
            w, b = getattr(stack, f"w{layer}")[e], getattr(stack, f"b{layer}")[e]
            x = torch.sin(torch.addmm(omega * b, x, omega * w)) if fold_omega else torch.sin(omega * (x @ w + b))
        hidden[mask] = x * routing.weights[mask]
    return model.decoder(hidden)


FORMS = {
    "sparse (grouped, omega folded)": lambda model, coords: model(coords).values,
    "dense": dense_values,
    "sparse, first version (mask per expert, omega on activations)": lambda m, c: first_values(m, c, fold_omega=False),
    "sparse, mask per expert, omega folded": lambda m, c: first_values(m, c, fold_omega=True),
}


def throughput(model: MoEC, form: str, batch: int = BATCH, steps: int = 12) -> float:
    """Training coordinates per second (forward, backward, Adam), after two warm-up steps."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(batch, generator=generator)
    coords = torch.rand(batch, 3, generator=generator) * 2 - 1
    forward = FORMS[form]

    def step() -> None:
        optimizer.zero_grad()
        values = forward(model, coords)
        torch.nn.functional.mse_loss(values[:, 0], target).backward()
        optimizer.step()

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * BATCH / (time.perf_counter() - start)


def brain_model(volume, experts: int, encoder: str = "siren") -> tuple[MoEC, pipeline.Plan]:
    """The model the brain gets at 256x; the SIREN encoder unless asked (the default before the latent grid)."""
    plan = pipeline.make_plan(volume, pipeline.Settings(ratio=256, experts=experts, encoder=encoder))
    return MoEC(plan.model, seed=0), plan


def dispatch_rows(volume) -> list[dict]:
    """Both encoders: the SIREN layer, and the default latent grid (1 channel), whose interpolation
    is shared by every expert and so is paid once in both forms."""
    rows = []
    for encoder in ("siren", "grid"):
        for experts in (4, 8, 16):
            model, plan = brain_model(volume, experts, encoder)
            sparse = throughput(model, "sparse (grouped, omega folded)")
            dense = throughput(model, "dense")
            rows.append(
                {
                    "encoder": encoder,
                    "experts": experts,
                    "expert_width": plan.model.expert_width,
                    "parameters": plan.model.parameter_count(),
                    "sparse": sparse,
                    "dense": dense,
                    "speedup": sparse / dense,
                }
            )
            print(
                f"  {encoder} encoder, {experts} experts: sparse {sparse:,.0f}/s, dense {dense:,.0f}/s "
                f"({sparse / dense:.1f}x)",
                flush=True,
            )
    return rows


DISPATCH_COLUMNS = [
    ("encoder", "encoder", ""),
    ("experts", "experts", ""),
    ("expert width", "expert_width", ""),
    ("parameters", "parameters", ","),
    ("sparse coords/s", "sparse", ",.0f"),
    ("dense coords/s", "dense", ",.0f"),
    ("sparse / dense", "speedup", ".2f"),
]


def tuning_rows(volume) -> list[dict]:
    """8 experts: the forward pass then and now, then batch size and threads for the current one."""
    model, _ = brain_model(volume, 8)
    rows = []
    for form in [f for f in FORMS if f != "dense"]:
        rows.append({"what": form, "threads": THREADS, "batch": BATCH, "coords_per_s": throughput(model, form)})
    for batch in (1 << 13, 1 << 17):
        rows.append(
            {
                "what": "sparse (grouped, omega folded)",
                "threads": THREADS,
                "batch": batch,
                "coords_per_s": throughput(model, "sparse (grouped, omega folded)", batch=batch),
            }
        )
    torch.set_num_threads(1)
    rows.append(
        {
            "what": "sparse (grouped, omega folded)",
            "threads": 1,
            "batch": BATCH,
            "coords_per_s": throughput(model, "sparse (grouped, omega folded)"),
        }
    )
    torch.set_num_threads(THREADS)
    base = rows[1]["coords_per_s"]
    for row in rows:
        row["vs_first"] = row["coords_per_s"] / base
        print(
            f"  {row['what']}, {row['threads']} threads, batch {row['batch']}: {row['coords_per_s']:,.0f}/s", flush=True
        )
    return rows


def decode_rows() -> list[dict]:
    """256^3 volumes at 256x: uint8 (a 65 KB model, like the brain template's bytes per voxel) and
    int16 (a 131 KB model, about twice the multiply-adds per voxel), at the default chunk size and,
    for comparison, at 1 << 14 (the per-chunk overhead against the network's own speed); then
    the same two volumes with the latent-grid encoder, whose experts are narrower, and with the grid
    model that made the best files (4 experts, 1 latent channel, router on the coordinates)."""
    rows = []
    best = {"encoder": "grid", "experts": 4, "grid_channels": 1, "router_features": False}
    cases = (
        (np.uint8, DEFAULT_CHUNK, "siren", {}),
        (np.uint8, 1 << 14, "siren", {}),
        (np.int16, DEFAULT_CHUNK, "siren", {}),
        (np.uint8, DEFAULT_CHUNK, "grid", {}),
        (np.int16, DEFAULT_CHUNK, "grid", {}),
        (np.uint8, DEFAULT_CHUNK, "grid, 4 experts, 1 channel", best),
        (np.int16, DEFAULT_CHUNK, "grid, 4 experts, 1 channel", best),
    )
    for dtype, chunk, encoder, options in cases:
        shape = (256, 256, 256)
        volume = from_array(np.zeros(shape, np.float32) + np.arange(256, dtype=np.float32), dtype=dtype)
        plan = pipeline.make_plan(volume, pipeline.Settings(ratio=256, **({"encoder": encoder} | options)))
        # Read cubically from the first step, as the default's files are.
        fitter = pipeline.new_fitter(volume, plan, TrainConfig(steps=1, cubic_from=0.0))
        moec = moecfile.from_bytes(pipeline.file_bytes(fitter, plan))
        start = time.perf_counter()
        recon = reconstruct(moec, chunk=chunk)
        seconds = time.perf_counter() - start
        rows.append(
            {
                "volume": f"256^3 {np.dtype(dtype).name}",
                "encoder": encoder,
                "chunk": chunk,
                "width": plan.model.expert_width,
                "parameters": plan.model.parameter_count(),
                "seconds": seconds,
                "voxels_per_second": recon.labels.size / seconds,
            }
        )
        print(f"  decode 256^3 {np.dtype(dtype).name}, {encoder} encoder, chunk {chunk}: {seconds:.2f} s", flush=True)
    return rows + ct_decode_rows()


def ct_decode_rows() -> list[dict]:
    """The development chest CT (512 x 512 x 61 int16) with the default settings at 256x, 1024x and
    4096x: the file's network is what costs, and one training step builds it (decode time does not
    depend on what the weights learned)."""
    source = CT
    if not source.exists():
        print(f"  (no development CT at {source}: its rows are skipped)")
        return []
    volume = load_volume(source)
    rows = []
    for ratio in (256, 1024, 4096):
        plan = pipeline.make_plan(volume, pipeline.Settings(ratio=ratio))
        # Read cubically from the first step, as the default's files are.
        fitter = pipeline.new_fitter(volume, plan, TrainConfig(steps=1, cubic_from=0.0))
        moec = moecfile.from_bytes(pipeline.file_bytes(fitter, plan))
        reconstruct(moec)  # torch's first calls in the process are not the decoder's cost
        start = time.perf_counter()
        recon = reconstruct(moec)
        seconds = time.perf_counter() - start
        rows.append(
            {
                "volume": f"chest CT 512x512x61 int16, {ratio}x",
                "encoder": "default",
                "chunk": DEFAULT_CHUNK,
                "width": plan.model.expert_width,
                "parameters": plan.model.parameter_count(),
                "seconds": seconds,
                "voxels_per_second": recon.labels.size / seconds,
            }
        )
        print(f"  decode chest CT at {ratio}x (defaults): {seconds:.2f} s", flush=True)
    return rows


def training_rows() -> list[dict]:
    """Milliseconds per cubic training step of the model the trial keeps on the chest CT (one
    network on the latents, the default batch), each level's refinement read whole against the
    default's choice (a large level read at the batch's points, codec.model.refinement), on the
    development CT and on it resampled to 244 slices (a clinical CT's 1.25 mm slices): refining
    costs in proportion to the grid, reading by points in proportion to the batch. The median of
    three timings of 15 steps each."""
    if not CT.exists():
        print(f"  (no development CT at {CT}: the training rows are skipped)")
        return []
    ct = load_volume(CT)
    thin = torch.nn.functional.interpolate(
        torch.from_numpy(ct.data.astype(np.float32))[None, None], size=(512, 512, 244), mode="trilinear"
    )[0, 0]
    volumes = [("chest CT 512x512x61", ct), ("chest CT 512x512x244", from_array(thin.numpy(), dtype=np.int16))]
    by_rule = latents.refined_read_pays
    readings = {"whole": lambda shape, points: False, "default": by_rule}
    rows = []
    for name, volume in volumes:
        for ratio in (256, 1024):
            plan = pipeline.make_plan(volume, pipeline.Settings(ratio=ratio, experts=1, encoder="grid"))
            fitter = pipeline.new_fitter(volume, plan, TrainConfig(steps=1000, cubic_from=0.0))
            run = fitter.fit()
            times: dict[str, list[float]] = {reading: [] for reading in readings}
            try:
                # One model, the two readings in alternation (so drift on the machine hits both),
                # a few steps after each switch left out of the timing.
                for reading in 3 * list(readings):
                    latents.refined_read_pays = readings[reading]
                    for _ in range(3):
                        next(run)
                    start = time.perf_counter()
                    for _ in range(15):
                        next(run)
                    times[reading].append((time.perf_counter() - start) / 15 * 1000)
            finally:
                latents.refined_read_pays = by_rule
                run.close()
            row = {"volume": name, "ratio": ratio, "finest": "x".join(map(str, plan.model.grid_resolutions()[0]))}
            row.update({f"{reading}_ms": float(np.median(ms)) for reading, ms in times.items()})
            row["speedup"] = row["whole_ms"] / row["default_ms"]
            rows.append(row)
            print(f"  {name} at {ratio}x: {row['whole_ms']:.0f} -> {row['default_ms']:.0f} ms a step", flush=True)
    return rows


TRAINING_COLUMNS = [
    ("volume", "volume", ""),
    ("ratio", "ratio", ".0f"),
    ("finest level", "finest", ""),
    ("refined whole (ms)", "whole_ms", ".1f"),
    ("default (ms)", "default_ms", ".1f"),
    ("speed-up", "speedup", ".2f"),
]


def memory_row() -> dict:
    """Peak RSS of `moec compress` on a 512^3 int16 volume, in its own process."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "big.nii"
        hu, _ = phantom_arrays((512, 512, 512))
        save_volume(from_array(hu, dtype=np.int16), source)
        del hu
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        start = time.perf_counter()
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "codec.cli",
                "compress",
                str(source),
                "-o",
                str(Path(tmp) / "big.moec"),
                "--ratio",
                "1024",
                "--steps",
                "30",
                "--threads",
                str(THREADS),
                "--quiet",
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        seconds = time.perf_counter() - start
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if run.returncode != 0:
        raise SystemExit(f"moec compress failed: {run.stderr}")
    return {
        "shape": "512^3 int16",
        "peak_gib": max(peak_kib, before) / 2**20,
        "seconds": seconds,
        "output": run.stdout.strip().splitlines()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-memory", action="store_true", help="skip the 512^3 memory run (a few minutes)")
    parser.add_argument(
        "--decode-only", action="store_true", help="only the decode rows, written to results/speed_decode.json"
    )
    parser.add_argument(
        "--dispatch-only",
        action="store_true",
        help="only the sparse / dense rows, written to results/speed_dispatch.json",
    )
    parser.add_argument(
        "--training-only",
        action="store_true",
        help="only the cubic training steps, written to results/speed_training.json",
    )
    parser.add_argument(
        "--memory-only", action="store_true", help="only the 512^3 memory run, written to results/speed_memory.json"
    )
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    if args.dispatch_only:
        dispatch = dispatch_rows(brain())
        print(table(dispatch, DISPATCH_COLUMNS))
        print(f"wrote {save('speed_dispatch', {'threads': THREADS, 'batch': BATCH, 'dispatch': dispatch})}")
        return
    if args.training_only:
        training = training_rows()
        print(table(training, TRAINING_COLUMNS))
        print(f"wrote {save('speed_training', {'threads': THREADS, 'batch': BATCH, 'training': training})}")
        return
    if args.memory_only:
        memory = memory_row()
        print(
            f"peak memory of moec compress (defaults) on a 512^3 int16 volume: {memory['peak_gib']:.2f} GiB "
            f"({memory['seconds']:.0f} s with 30 steps)"
        )
        print(f"wrote {save('speed_memory', {'threads': THREADS, 'memory': memory})}")
        return
    if args.decode_only:
        decode = decode_rows()
        print(f"wrote {save('speed_decode', {'threads': THREADS, 'decode': decode, 'note': 'untrained 256x models'})}")
        return
    volume = brain()
    print("training throughput, sparse vs dense dispatch (brain template widths at 256x):", flush=True)
    dispatch = dispatch_rows(volume)
    print(table(dispatch, DISPATCH_COLUMNS))
    print("\nthe forward pass then and now, batch sizes, threads (8 experts):", flush=True)
    tuning = tuning_rows(volume)
    print(
        table(
            tuning,
            [
                ("form", "what", ""),
                ("threads", "threads", ""),
                ("batch", "batch", ","),
                ("coords/s", "coords_per_s", ",.0f"),
                ("vs first version", "vs_first", ".2f"),
            ],
        )
    )
    print("\ndecode of a 256^3 volume and of the development CT:", flush=True)
    decode = decode_rows()
    print(
        table(
            decode,
            [
                ("volume (256x)", "volume", ""),
                ("encoder", "encoder", ""),
                ("expert width", "width", ""),
                ("parameters", "parameters", ","),
                ("chunk", "chunk", ","),
                ("seconds", "seconds", ".2f"),
                ("voxels/s", "voxels_per_second", ",.0f"),
            ],
        )
    )
    print("\na cubic training step, the refinement read whole against the default:", flush=True)
    training = training_rows()
    print(table(training, TRAINING_COLUMNS))
    memory = None if args.skip_memory else memory_row()
    if memory:
        print(
            f"peak memory of moec compress on a 512^3 int16 volume: {memory['peak_gib']:.2f} GiB "
            f"({memory['seconds']:.0f} s with 30 steps)"
        )
    path = save(
        "speed",
        {
            "threads": THREADS,
            "batch": BATCH,
            "dispatch": dispatch,
            "tuning": tuning,
            "decode": decode,
            "training": training,
            "memory": memory,
            "note": "decode timed with an untrained 256x model",
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
