"""Static int8 quantization of a checkpoint's ONNX export, calibrated on real tiles.

``ob-models quantize-int8 CHECKPOINT --imagery SRC`` reads tiles of the user's imagery as
``ob-infer`` reads them (the 50 cm tile grid, normalised and padded as the model takes them),
lets ONNX Runtime's static quantizer (``onnxruntime.quantization.quantize_static``: QDQ format,
int8 weights per channel, uint8 activations whose ranges come from those tiles) write
``<stem>.int8.onnx`` beside the checkpoint, and keeps the fp32 export's metadata in it (so
it runs only with the weights it was made from). ``ob-infer --backend onnxruntime-int8`` runs it.
It is an option, never the default: ``bench/README.md`` has its speed and its F1 on validation.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import shapely

from open_buildings.errors import ConfigError, ImageryError
from open_buildings.geo import grid as tiling
from open_buildings.geo.imagery import open_imagery
from open_buildings.models.checkpoint_meta import sidecar_path, write_sidecar
from open_buildings.pipelines.onnx_model import META_KEY, OnnxInt8Model, OnnxModel, export_path

__all__ = ["calibration_tiles", "quantize_beside"]

#: The least building-mask agreement with fp32 on the calibration tiles for the file to be kept.
MIN_AGREEMENT = 0.95


def calibration_tiles(
    imagery: Sequence[str], count: int, *, skip: Sequence[str] = (), min_side: int = 128
) -> list[np.ndarray]:
    """Up to ``count`` tiles (uint8 ``(3, H, W)``), read from the imagery sources in turn, each
    cropped to the box around its pixels with imagery (so the ranges are those of imagery, not
    of the zeros around a small source).

    Args:
        imagery: sources as ``ob-infer --imagery`` takes them.
        count: how many tiles at most.
        skip: tile tokens not to read (e.g. validation tiles).
        min_side: the least side of a tile's box with imagery.

    Raises:
        ImageryError: no tile of the sources has imagery over ``min_side`` pixels square.
    """
    streams = [_tiles_of(spec, set(skip), min_side) for spec in imagery]
    tiles: list[np.ndarray] = []
    while streams and len(tiles) < count:
        for stream in list(streams):
            tile = next(stream, None)
            if tile is None:
                streams.remove(stream)
            elif len(tiles) < count:
                tiles.append(tile)
    if not tiles:
        raise ImageryError(
            f"no tile of {', '.join(imagery)} has imagery over {min_side} x {min_side} pixels; "
            "give imagery like the imagery the model will run on"
        )
    return tiles


def _tiles_of(spec: str, skip: set[str], min_side: int) -> Iterator[np.ndarray]:
    source = open_imagery(spec)
    for tile in tiling.cover(shapely.box(*source.bounds_lonlat())):
        if tile.id in skip:
            continue
        image = source.read(tile.grid)
        rows, cols = (
            np.flatnonzero(image.valid.any(axis=1)),
            np.flatnonzero(image.valid.any(axis=0)),
        )
        if rows.size and min(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 >= min_side:
            yield image.rgb[:, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


class _Reader:
    """ONNX Runtime's calibration data reader over prepared tiles (one tile a batch)."""

    def __init__(self, model: OnnxModel, tiles: Sequence[np.ndarray]) -> None:
        self.name = model.session.get_inputs()[0].name
        self.batches = iter(
            [model.prepare(t[None].astype(np.float32) / np.float32(255))[0] for t in tiles]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {self.name: batch}


def quantize_beside(checkpoint: str | os.PathLike[str], tiles: Sequence[np.ndarray]) -> Path:
    """Write ``<stem>.int8.onnx`` (and its sha256 sidecar) beside ``checkpoint``.

    Args:
        checkpoint: a ``.safetensors`` checkpoint whose fp32 export (``ob-models export-onnx``)
            lies beside it.
        tiles: calibration tiles (:func:`calibration_tiles`).

    Returns:
        The int8 file.

    Raises:
        ConfigError: there is no fp32 export to quantize.
        RuntimeError: the int8 model's building masks agree with fp32 on less than
            :data:`MIN_AGREEMENT` of the calibration pixels (nothing usable is left behind).
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quant_pre_process, quantize_static

    fp32 = export_path(checkpoint)
    if not fp32.is_file():
        raise ConfigError(
            f"{checkpoint} has no fp32 ONNX export ({fp32.name}) to quantize; write it first "
            "with `ob-models export-onnx CHECKPOINT`"
        )
    reference = OnnxModel(fp32)
    target = export_path(checkpoint, int8=True)
    sidecar_path(target).unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="ob-int8-") as folder:
        prepared, quantized = Path(folder) / "pre.onnx", Path(folder) / "int8.onnx"
        quant_pre_process(str(fp32), str(prepared))
        quantize_static(
            str(prepared), str(quantized), _Reader(reference, tiles),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        )  # fmt: skip
        network = onnx.load(str(quantized))
        props = {p.key: p.value for p in onnx.load(str(fp32)).metadata_props}
        info = json.loads(props[META_KEY])
        info["precision"] = {"int8": "static QDQ, per-channel weights", "tiles": len(tiles)}
        del network.metadata_props[:]
        network.metadata_props.add(key=META_KEY, value=json.dumps(info))
        onnx.save(network, str(target))
    agreement = mask_agreement(reference, OnnxInt8Model(target), tiles[:2])
    if agreement < MIN_AGREEMENT:
        target.unlink()
        raise RuntimeError(
            f"the int8 model's building masks agree with fp32 on {agreement:.3f} of the "
            f"calibration pixels (< {MIN_AGREEMENT}); not kept"
        )
    write_sidecar(target)
    return target


def mask_agreement(a: OnnxModel, b: OnnxModel, tiles: Sequence[np.ndarray]) -> float:
    """The share of pixels whose building mask (first channel's logit > 0) two models agree on."""
    from open_buildings.pipelines.forward import run_model

    pairs = zip(run_model(a, tiles), run_model(b, tiles))
    return float(np.mean([((x[0] > 0) == (y[0] > 0)).mean() for x, y in pairs]))
