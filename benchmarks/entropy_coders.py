"""Which entropy coder for the quantized weights: the range coder with the per-tensor models .moec
files use (parametric, frequency table, or a latent grid's spatial context model), against zstd of the raw
symbols and a Huffman code per tensor, both
with their side information counted. Prints a table and writes benchmarks/results/entropy_coders.json.

    python benchmarks/entropy_coders.py FILE.moec [FILE.moec ...]
"""

from __future__ import annotations

import argparse
import heapq
from collections import Counter

import numpy as np
import zstandard
from common import save, table

from codec.coding import entropy
from codec.coding.quantize import quantize
from codec.format import moecfile
from codec.format.payload import stored_qsteps
from codec.model import is_latent


def huffman_bytes(symbols: np.ndarray) -> int:
    """Code bits plus a table of (symbol as int16, code length as u8) per distinct symbol."""
    counts = Counter(symbols.reshape(-1).tolist())
    if len(counts) == 1:
        return 3
    heap = [(n, i, (s,)) for i, (s, n) in enumerate(counts.items())]
    heapq.heapify(heap)
    length = dict.fromkeys(counts, 0)
    tie = len(heap)
    while len(heap) > 1:
        n1, _, a = heapq.heappop(heap)
        n2, _, b = heapq.heappop(heap)
        for s in a + b:
            length[s] += 1
        heapq.heappush(heap, (n1 + n2, tie, a + b))
        tie += 1
    bits = sum(counts[s] * length[s] for s in counts)
    return (bits + 7) // 8 + 3 * len(counts)


def measure(path: str) -> dict:
    data = open(path, "rb").read()
    moec = moecfile.from_bytes(data)
    if moec.meta.quant.float16:
        raise SystemExit(f"{path} holds float16 weights; compress it with --bits 8 (the default)")
    qsteps = stored_qsteps(data)
    tensors = [(n, p.detach().numpy()) for n, p in moec.model.named_tensors()]
    symbols = [quantize(w, qsteps[n]) for n, w in tensors]
    models = [entropy.fit_model(s, spatial=is_latent(n)) for (n, _), s in zip(tensors, symbols)]
    table_bytes = sum(7 + 2 * qsteps[n].size + m.overhead_bits // 8 for (n, _), m in zip(tensors, models))
    range_coded = len(entropy.encode(symbols, models)) + table_bytes
    raw = b"".join(s.astype("<i2").tobytes() for s in symbols)
    qsteps_only = sum(2 * qsteps[n].size for n, _ in tensors)
    zstd = len(zstandard.ZstdCompressor(level=22).compress(raw)) + qsteps_only
    huffman = sum(huffman_bytes(s) for s in symbols) + qsteps_only
    ideal = sum(entropy.ideal_bits(s, m) for s, m in zip(symbols, models)) / 8 + table_bytes
    n = sum(s.size for s in symbols)
    return {
        "file": path,
        "weights": n,
        "range coder (.moec models)": range_coded,
        "zstd -22 of int16 symbols": zstd,
        "Huffman per tensor (+ tables)": huffman,
        "ideal for those models": round(ideal),
        "int16 raw": len(raw) + qsteps_only,
        "bits_per_weight": 8 * range_coded / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    rows = [measure(f) for f in args.files]
    keys = [
        "range coder (.moec models)",
        "zstd -22 of int16 symbols",
        "Huffman per tensor (+ tables)",
        "ideal for those models",
        "int16 raw",
    ]
    print(table(rows, [("file", "file", ""), ("weights", "weights", ",")] + [(k, k, ",") for k in keys]))
    save("entropy_coders", {"rows": rows})


if __name__ == "__main__":
    main()
