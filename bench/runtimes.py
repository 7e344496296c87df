"""The shipped default model's ONNX export in each CPU runtime: ``python -m bench.runtimes``.

Dense real tiles (the sample imagery mirrored into a 3 km square, ``bench.imagery``), each
padded as ``ob-infer`` pads it, through ONNX Runtime fp32, ONNX Runtime int8 (the shipped
``weights.int8.onnx``, ``ob-models quantize-int8``) and, where the CPU has native bf16, OpenVINO
bf16: seconds per tile (best of interleaved rounds, so the machine's noise
hits all alike), GFLOP/s, and how far each output is from ONNX Runtime fp32 (largest logit
difference, and the share of pixels whose building mask agrees).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import interleaved, machine
from open_buildings.pipelines import forward, onnx_model
from open_buildings.resources import resource


def dense_tiles(count: int, folder: Path) -> list[np.ndarray]:
    """``count`` dense tiles' pixels over the mirrored sample imagery."""
    from bench.imagery import mirrored_imagery, sample_center, square_region
    from open_buildings.geo import grid, imagery, regions

    source = imagery.open_imagery(str(mirrored_imagery(folder / "mirrored.tif", 3.0)))
    lon, lat = sample_center()
    region = regions.read_region(square_region(lon, lat, 1, folder / "r.geojson")).geometry
    return [source.read(tile.grid).rgb for tile in list(grid.cover(region))[:count]]


def run(tiles: int = 4, rounds: int = 3) -> dict[str, Any]:
    """Seconds per tile and agreement with ONNX Runtime fp32 for each runtime."""
    export = resource("models", "default", "weights.onnx")
    runtimes: dict[str, Any] = {"onnxruntime fp32": onnx_model.OnnxModel(export)}
    int8 = resource("models", "default", "weights.int8.onnx")
    if int8.is_file():
        runtimes["onnxruntime int8"] = onnx_model.OnnxInt8Model(int8)
    if onnx_model.openvino_bf16_available():
        runtimes["openvino bf16"] = onnx_model.OpenVinoBf16Model(export)
    with tempfile.TemporaryDirectory() as tmp:
        images = dense_tiles(tiles, Path(tmp))
    outputs = {name: forward.run_model(m, images) for name, m in runtimes.items()}  # warm-up
    times = interleaved(
        {name: (lambda m=m: forward.run_model(m, images)) for name, m in runtimes.items()},
        rounds,
        warmup=0,
    )
    reference = outputs["onnxruntime fp32"]
    table = {}
    for name, logits in outputs.items():
        diff = max(float(np.abs(a - b).max()) for a, b in zip(logits, reference, strict=True))
        agree = np.mean(
            [((a[0] > 0) == (b[0] > 0)).mean() for a, b in zip(logits, reference, strict=True)]
        )
        table[name] = {
            "s_per_tile": times[name].wall / len(images),
            "cpu_s_per_tile": times[name].cpu / len(images),
            "max_logit_diff": diff,
            "mask_agreement": float(agree),
        }
    return {"tiles": len(images), "shape": images[0].shape, "table": table}


def main(argv: list[str] | None = None) -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    result = run(args.tiles, args.rounds)
    print(f"{result['tiles']} dense tiles of {result['shape'][1]}x{result['shape'][2]} px")
    base = result["table"]["onnxruntime fp32"]["s_per_tile"]
    print("runtime            s/tile  cpu s/tile  speed-up  max |logit diff|  mask agreement")
    for name, row in result["table"].items():
        print(
            f"{name:<18} {row['s_per_tile']:6.2f}  {row['cpu_s_per_tile']:10.2f}  "
            f"{base / row['s_per_tile']:7.2f}x  {row['max_logit_diff']:16.3f}  "
            f"{row['mask_agreement']:14.4f}"
        )


if __name__ == "__main__":
    main()
