"""Static int8 quantization of a checkpoint's ONNX export, calibrated on real imagery.

``ob-models quantize-int8 CHECKPOINT --imagery SRC`` reads windows of the user's imagery as
``ob-infer`` reads it (the 50 cm tile grid, normalised as the model takes it), lets ONNX
Runtime's static quantizer (``onnxruntime.quantization.quantize_static``: QDQ format, int8
weights per channel, uint8 activations whose ranges are the 99.99th percentile over those
windows; min-max ranges lost 0.012 in validation F1, the percentile 0.004) write
``<stem>.int8.onnx`` beside the checkpoint, and keeps the fp32 export's metadata in it (so
it runs only with the weights it was made from). ``ob-infer --backend onnxruntime-int8`` runs it.
It is an option, not the default: ``bench/README.md`` has its speed and its F1 on validation.
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

__all__ = ["calibration_windows", "quantize_beside"]

#: The least building-mask agreement with fp32 on the calibration windows for the file to be kept.
MIN_AGREEMENT = 0.95
#: The calibration windows' side (px) and the activation range's percentile.
WINDOW = 256
PERCENTILE = 99.99


def calibration_windows(
    imagery: Sequence[str], count: int, *, skip: Sequence[str] = (), window: int = WINDOW
) -> list[np.ndarray]:
    """Up to ``count`` windows (uint8 ``(3, window, window)``) of the imagery, read on the tile
    grid as ``ob-infer`` reads it, each with imagery on at least 90% of its pixels (so the ranges
    are those of imagery, not of the zeros around a small source), drawn evenly from every
    source's tiles and shuffled with a fixed seed. One size for all: the percentile calibrator
    stacks its batches.

    Args:
        imagery: sources as ``ob-infer --imagery`` takes them.
        count: how many windows at most.
        skip: tile tokens not to read (e.g. validation tiles).
        window: the windows' side in pixels.

    Raises:
        ImageryError: no tile of the sources has such a window.
    """
    streams = [_windows_of(spec, set(skip), window) for spec in imagery]
    found: list[np.ndarray] = []
    while streams and len(found) < 4 * count:  # enough to draw from, without reading everything
        for stream in list(streams):
            got = next(stream, None)
            if got is None:
                streams.remove(stream)
            else:
                found.extend(got)
    if not found:
        raise ImageryError(
            f"no tile of {', '.join(imagery)} has {window} x {window} pixels of imagery; give "
            "imagery like the imagery the model will run on"
        )
    order = np.random.default_rng(0).permutation(len(found))[:count]
    return [found[k] for k in sorted(order)]


def _windows_of(spec: str, skip: set[str], window: int) -> Iterator[list[np.ndarray]]:
    """Each tile's windows with imagery, a list per tile."""
    source = open_imagery(spec)
    for tile in tiling.cover(shapely.box(*source.bounds_lonlat())):
        if tile.id in skip:
            continue
        image = source.read(tile.grid)
        height, width = image.valid.shape
        yield [
            image.rgb[:, r : r + window, c : c + window]
            for r in range(0, height - window + 1, window)
            for c in range(0, width - window + 1, window)
            if image.valid[r : r + window, c : c + window].mean() >= 0.9
        ]


class _Reader:
    """ONNX Runtime's calibration data reader over prepared windows (one window a batch)."""

    def __init__(self, model: OnnxModel, windows: Sequence[np.ndarray]) -> None:
        self.name = model.session.get_inputs()[0].name
        self.batches = iter(
            [model.prepare(t[None].astype(np.float32) / np.float32(255))[0] for t in windows]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {self.name: batch}


def quantize_beside(checkpoint: str | os.PathLike[str], windows: Sequence[np.ndarray]) -> Path:
    """Write ``<stem>.int8.onnx`` (and its sha256 sidecar) beside ``checkpoint``.

    Args:
        checkpoint: a ``.safetensors`` checkpoint whose fp32 export (``ob-models export-onnx``)
            lies beside it.
        windows: calibration windows (:func:`calibration_windows`).

    Returns:
        The int8 file.

    Raises:
        ConfigError: there is no fp32 export to quantize.
        RuntimeError: the int8 model's building masks agree with fp32 on less than
            :data:`MIN_AGREEMENT` of the calibration pixels (nothing usable is left behind).
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    fp32 = export_path(checkpoint)
    if not fp32.is_file():
        raise ConfigError(
            f"{checkpoint} has no fp32 ONNX export ({fp32.name}) to quantize; write it first "
            "with `ob-models export-onnx CHECKPOINT`"
        )
    reference = OnnxModel(fp32)
    target = export_path(checkpoint, OnnxInt8Model)
    sidecar_path(target).unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="ob-int8-") as folder:
        prepared, quantized = Path(folder) / "pre.onnx", Path(folder) / "int8.onnx"
        quant_pre_process(str(fp32), str(prepared))
        quantize_static(
            str(prepared), str(quantized), _Reader(reference, windows),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.Percentile,
            extra_options={"CalibPercentile": PERCENTILE},
        )  # fmt: skip
        network = onnx.load(str(quantized))
        props = {p.key: p.value for p in onnx.load(str(fp32)).metadata_props}
        info = json.loads(props[META_KEY])
        info["precision"] = {
            "int8": f"static QDQ, per-channel weights, activations at the {PERCENTILE} percentile",
            "calibration_windows": len(windows),
        }
        del network.metadata_props[:]
        network.metadata_props.add(key=META_KEY, value=json.dumps(info))
        onnx.save(network, str(target))
    agreement = mask_agreement(reference, OnnxInt8Model(target), windows[:2])
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
