"""What ``--tta`` costs: one real sample tile through the model, plain and with the 8 flips/turns.

``python -m bench.tta [--runs 3] [--backend auto|torch]`` loads the default model exactly as an
``ob-infer`` worker does (``CheckpointModelHandler``: ONNX Runtime on a CPU by default) and times
``runtime.run_model`` on the sample's tile 182f13ab with and without ``tta``, interleaved. The
ratio is the cost; the quality gain is measured by ``pipelines/eval/val_blocks.sh ... --tta``.
"""

from __future__ import annotations

import argparse

from bench.common import SAMPLE, THREADS, interleaved, machine


def main(argv: list[str] | None = None) -> None:
    """Time plain and TTA inference on one tile; print both and their ratio."""
    import torch

    from open_buildings.geo.grid import Tile
    from open_buildings.geo.imagery import open_imagery
    from open_buildings.pipelines.config import RuntimeConfig
    from open_buildings.pipelines.model_handler import CheckpointModelHandler
    from open_buildings.pipelines.runtime import resolve_model, run_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime"])
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)
    handler = CheckpointModelHandler(resolve_model("default"), RuntimeConfig(backend=args.backend))
    model = handler.load_model()
    tile = Tile("182f13ab")
    rgb = open_imagery(str(SAMPLE / "items.json")).read(tile.grid).rgb
    times = interleaved(
        {
            "plain": lambda: run_model(model, [rgb]),
            "tta": lambda: run_model(model, [rgb], tta=True),
        },
        runs=args.runs,
    )
    print(
        f"{machine()}; backend {handler.backend_used}; tile {tile.id} {rgb.shape[1]}x{rgb.shape[2]}"
    )
    for name, t in times.items():
        print(f"  {name:5} wall {t.wall:.2f} s  cpu {t.cpu:.2f} s")
    print(
        f"  TTA / plain: wall {times['tta'].wall / times['plain'].wall:.1f}x, "
        f"cpu {times['tta'].cpu / times['plain'].cpu:.1f}x"
    )


if __name__ == "__main__":
    main()
