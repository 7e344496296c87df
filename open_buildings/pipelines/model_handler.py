"""Beam's RunInference handler for a safetensors checkpoint: a thin adapter over ``runtime``.

Beam's plain :class:`~apache_beam.ml.inference.base.ModelHandler` is the base: this handler
loads the model with :func:`.runtime.load_model` (sha256 checked, MoE capacity set, ONNX Runtime
on a CPU) and runs batches with :func:`.runtime.run_model` (tiles of any size, padded by a rule
that depends only on the tile). Batching and model sharing are the base class's own options.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from open_buildings.pipelines import device_decode, runtime
from open_buildings.pipelines.config import RuntimeConfig
from open_buildings.pipelines.forward import NumpyForward, run_on_imagery
from open_buildings.pipelines.runtime import ModelRef, TileInput


class CheckpointModelHandler(ModelHandler[TileInput, PredictionResult, Any]):
    """RunInference handler for a checkpoint; examples are :class:`.runtime.TileInput`.

    Args:
        model: the checkpoint to load (its sha256 is checked when the worker loads it).
        config: device, bf16, batch sizes, model sharing and backend (the defaults if None).
        pad_multiple: tiles are padded to multiples of this (see ``runtime.run_model``).
    """

    def __init__(
        self,
        model: ModelRef,
        config: RuntimeConfig | None = None,
        *,
        pad_multiple: int = runtime.PAD_MULTIPLE,
    ) -> None:
        config = config or RuntimeConfig()
        super().__init__(
            min_batch_size=config.min_batch_size,
            max_batch_size=config.max_batch_size,
            large_model=config.share_model_across_processes,
        )
        self._ref = model
        self._config = config
        self._pad_multiple = pad_multiple
        self._device: Any = None
        self.backend_used: str | None = None

    def load_model(self) -> Any:
        """Load the checkpoint on this worker (see :func:`.runtime.load_model`).

        A model shared across processes is served as a :class:`.forward.NumpyForward`, the one
        form Beam's cross-process proxy can run whatever the backend.
        """
        model, self.backend_used, self._device = runtime.load_model(self._ref, self._config)
        if self._config.share_model_across_processes:
            return NumpyForward(model, self._device, self._config.bf16)
        return model

    def run_inference(
        self,
        batch: Sequence[TileInput],
        model: Any,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        """Return each tile's logits (float32 ``(C, H, W)`` numpy) as a ``PredictionResult``.

        The model runs on the box of each tile's imagery (``forward.run_on_imagery``). Where the
        settings decode on the device (``device_decode.decodes_on_device``), each result is a
        :class:`.device_decode.DecodedTile` instead.
        """
        tiles = [(example.rgb, example.valid) for example in batch]
        device = self._device or runtime.resolve_device(self._config.device)
        if device_decode.decodes_on_device(self._config):
            if hasattr(model, "run_decoded"):  # a NumpyForward, or Beam's proxy of one
                decoded = model.run_decoded(tiles, self._pad_multiple)
            else:
                decoded = device_decode.run_decoded(
                    model,
                    tiles,
                    device=device,
                    bf16=self._config.bf16,
                    pad_multiple=self._pad_multiple,
                )
            return [PredictionResult(x, y, self._ref.name) for x, y in zip(batch, decoded)]
        logits = run_on_imagery(
            model,
            tiles,
            device=device,
            bf16=self._config.bf16,
            pad_multiple=self._pad_multiple,
            tta=self._config.tta,
        )
        return [PredictionResult(x, y, self._ref.name) for x, y in zip(batch, logits)]

    def get_num_bytes(self, batch: Sequence[TileInput]) -> int:
        """Return the bytes of pixels in a batch (for RunInference's metrics)."""
        return sum(int(example.rgb.nbytes) for example in batch)

    def get_metrics_namespace(self) -> str:
        """Return the namespace of RunInference's own metrics."""
        return "open_buildings_inference"
