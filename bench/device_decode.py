"""The decode on the model's device against the host decode: ``python -m bench.device_decode``.

Real inputs: the shipped default model's logits on the two sample tiles (``bench.polygonize``).
It reports what holds on any machine (how many instances and pixels agree with
``models.heads.decode``, the bytes that cross to the host, and the neighbour gathers the decode
makes over the building pixels) and, interleaved, the seconds per tile of both decodes
here. ``--device cuda`` times the PyTorch side on a GPU (the script to run where one is lent).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from bench.common import interleaved, machine


def agreement(logits: list[np.ndarray]) -> dict[str, Any]:
    """Instances and pixels of the device decode that equal the host decode's, over the tiles."""
    import torch

    from open_buildings.models import heads
    from open_buildings.models.decode_torch import decode_on_device

    out = {"instances": 0, "instances_exact": 0, "building_px": 0, "px_differ": 0}
    for x in logits:
        want, _ = heads.decode(x)
        [(got, _, _)] = decode_on_device(torch.from_numpy(x)[None])
        got = got.astype(np.int32)
        n = int(want.max())
        out["instances"] += n
        out["instances_exact"] += sum(
            bool(np.array_equal(want == i, got == i)) for i in range(1, n + 1)
        )
        out["building_px"] += int(np.count_nonzero(want))
        out["px_differ"] += int(np.count_nonzero(want != got))
    return out


def steps(batch: Any) -> int:
    """Neighbour gathers ``decode_on_device`` makes on a batch: each reads every building pixel's
    4 or 8 neighbours, and with a few elementwise kernels is one step of its loops."""
    from open_buildings.models import decode_torch

    calls = 0
    original = decode_torch._gather

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return original(*args, **kwargs)

    decode_torch._gather = counted
    try:
        decode_torch.decode_on_device(batch)
    finally:
        decode_torch._gather = original
    return calls


def run(device: str = "cpu", runs: int = 2) -> dict[str, Any]:
    """Agreement, bytes, steps and interleaved seconds per tile of both decodes."""
    import torch

    from bench.polygonize import model_outputs
    from open_buildings.models import heads
    from open_buildings.models.decode_torch import decode_on_device

    logits = [x for x, _ in model_outputs()]
    height = min(x.shape[1] for x in logits)
    width = min(x.shape[2] for x in logits)
    batch = torch.from_numpy(np.stack([x[:, :height, :width] for x in logits])).to(device)

    def on_device() -> None:
        decode_on_device(batch)
        if device == "cuda":
            torch.cuda.synchronize()

    timing = interleaved(
        {
            "host (scipy, scikit-image)": lambda: [heads.decode(x) for x in logits],
            f"PyTorch on {device}, one batch": on_device,
        },
        runs=runs,
    )
    pixels = sum(x.shape[1] * x.shape[2] for x in logits)
    return {
        "machine": machine(),
        "tiles": len(logits),
        "agreement": agreement(logits),
        "bytes_to_host_per_px": {"logits (2 x float32)": 8, "labels (uint16)": 2},
        "gathers_per_batch": steps(batch),
        "building_px": int((batch[:, 0] > 0).sum()),
        "pixels": pixels,
        "seconds_per_tile": {k: round(t.wall / len(logits), 3) for k, t in timing.items()},
        "cpu_seconds_per_tile": {k: round(t.cpu / len(logits), 3) for k, t in timing.items()},
    }


def main(argv: list[str] | None = None) -> None:
    """Print the figures as JSON."""
    p = argparse.ArgumentParser(prog="python -m bench.device_decode", description=__doc__)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--runs", type=int, default=2)
    args = p.parse_args(argv)
    print(json.dumps(run(args.device, args.runs), indent=2))


if __name__ == "__main__":
    main()
