"""Training-step benchmark: seconds per step and per output slice of DblurDoseNet (3D) and the 2D ablation.

One step = forward_slab + weighted MSE + backward + Adam on a batch of ``--batch`` output slices of
``--patch`` x ``--patch`` patches in slabs of S consecutive slices (S + 10 input slices each), as
``dblurdose train`` runs it (channels-last on the CPU). Synthetic inputs: the cost does not depend
on the values. Medians of ``--repeats`` steps after one warm-up step, all in one process and
round robin over the rows (so that a change in the machine's load hits every row alike); the
ratios against the first row (the v0.1 training: 3D, slab 4) compare like with like; the row
"v0.2 autograd tap sums" is the v0.2 training step (``network.TAP_SUM_NODE = False``) for the
row below it; the row "bf16" is ``train --cpu-bf16`` (the forward pass under bfloat16 autocast), for
the 3D slab-8 row above it; the rows "compiled" are ``train --compile`` (the step built by
torch.compile; its compile time falls in the warm-up round and is printed apart), without and with bf16; the
row "kept" is ``train --consistent 0.8`` (the loss also on the map kept consistent with the SPECT at 12 mm,
:func:`~DblurDoseLib.learning.training.batch_loss`), for the bf16 slab-16 row above it.

    python benchmarks/bench_training.py [--threads 2] [--repeats 5] [--patch 64] [--batch 32] [--device cpu]

``--device cuda`` (or ``auto``, ``gpu``: :func:`~DblurDoseLib.devices.resolve_device`) times the same rows on
a GPU, as ``dblurdose train --device cuda`` runs them: the rows "bf16" under CUDA's bfloat16 autocast
(``train``'s mixed precision on a GPU), each step timed to the GPU's end of work. The GPU rows have not
been measured here (no GPU was lent); on a machine without one, the option stops with the line naming
the devices there are.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from DblurDoseLib.devices import resolve_device
from DblurDoseLib.errors import DblurDoseError
from DblurDoseLib.learning import network, training
from DblurDoseLib.learning.network import DblurDoseNet


def make_step(variant: str, slab: int, patch: int, batch: int, tap_sum_node: bool = True, bf16: bool = False,
              compiled: bool = False, kept: bool = False, device: torch.device | None = None):
    """One training step as a function returning its (step, forward) seconds; ``tap_sum_node=False``:
    the v0.2 backward of the extractor's tap sums (autograd of slices); ``bf16``: the forward pass under
    bfloat16 autocast (``train --cpu-bf16``); ``compiled``: the forward (and so the backward) built by
    torch.compile (``train --compile``); ``kept``: the loss of ``train --consistent 0.8``; ``device``: where
    the step runs, the CPU if None (on a GPU each time ends when the GPU's work does)."""
    device = device or torch.device("cpu")
    torch.manual_seed(0)
    net = DblurDoseNet(variant).to(device)
    net.unet.to(memory_format=torch.channels_last)
    if net.extractor is not None:
        net.extractor.to(memory_format=torch.channels_last_3d)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    forward = torch.compile(network.SlabForward(net)) if compiled else net.forward_slab
    n = max(1, batch // slab)
    x = torch.rand(n, 2, slab + 10, patch, patch, device=device)
    if net.extractor is not None:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    dvk, truth = (torch.rand(n, 1, slab, patch, patch, device=device) for _ in range(2))
    weight = torch.full_like(truth, training.BODY_WEIGHT)
    batch_ = training.Batch(x, dvk, truth, weight, dvk, torch.full((n,), 12.0, device=device))
    spacing = (1.96, 1.96, 3.0)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step() -> tuple[float, float]:
        network.TAP_SUM_NODE = tap_sum_node
        sync()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            pred = forward(x, dvk)
        if kept:
            loss = training.batch_loss(pred, batch_, spacing, relative_weight=4.0, consistent=0.8)
        else:
            loss = (pred.float() - truth).pow(2).mean()
        sync()
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        return time.perf_counter() - t0, t1 - t0

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda, gpu or auto")
    args = ap.parse_args()
    try:
        device = resolve_device(args.device)
    except DblurDoseError as error:  # no such GPU here: the one line that says which devices there are
        raise SystemExit(f"bench_training: {error}") from None
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {device}, {args.threads} threads, batch {args.batch} output slices of "
          f"{args.patch}x{args.patch}, median of {args.repeats} steps")
    rows = [("dblurdose", 4, True, False, False, False), ("dblurdose", 8, False, False, False, False),
            ("dblurdose", 8, True, False, False, False), ("dblurdose", 8, True, True, False, False),
            ("dblurdose", 8, True, False, True, False), ("dblurdose", 8, True, True, True, False),
            ("dblurdose", 16, True, False, False, False), ("dblurdose", 16, True, True, False, False),
            ("dblurdose", 16, True, True, False, True), ("2d", 4, True, False, False, False),
            ("2d", 8, True, False, False, False)]
    steps = [make_step(variant, slab, args.patch, args.batch, node, bf16, compiled, kept, device)
             for variant, slab, node, bf16, compiled, kept in rows]
    times, warm = [[] for _ in rows], [0.0 for _ in rows]
    for i in range(args.repeats + 1):  # round robin: a change of machine load hits every row alike
        for k, (step, store) in enumerate(zip(steps, times)):
            t = step()
            if i:  # the first round warms up (and compiles)
                store.append(t)
            else:
                warm[k] = t[0]
    base = None
    for (variant, slab, node, bf16, compiled, kept), store, first in zip(rows, times, warm):
        step, fwd = (statistics.median(t[k] for t in store) for k in (0, 1))
        base = base or step
        label = ((" (v0.2 autograd tap sums)" if not node else "") + (" compiled" if compiled else "")
                 + (" bf16" if bf16 else "") + (" kept" if kept else ""))
        print(f"{variant:10s} slab {slab:2d}{label}: step {step:.2f} s (forward {fwd:.2f} s), "
              f"{1000 * step / args.batch:.0f} ms per output slice, {step / base:.2f}x the first row"
              + (f"; first step (compiling) {first:.0f} s" if compiled else ""))

if __name__ == "__main__":
    main()
