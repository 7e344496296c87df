"""A local run's worker threads hand every element whole to the next stage.

Beam's ``multi_threading`` workers flushed their output every second from a timer thread, cutting
an element that was being encoded in two; the next stage, split over two threads, then decoded
garbage (CI saw ``ob-infer`` fail on "Unknown type tag c4" about once in 60 runs). An element
whose pickling takes a third of a second straddles that flush every time.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from open_buildings.pipelines import job
from open_buildings.pipelines.config import InferConfig


class SlowToPickle:
    """A value whose encoding takes long enough to meet a timed flush."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __reduce__(self) -> tuple:
        time.sleep(0.25)
        return (SlowToPickle, (self.value,))


def test_default_local_run_uses_two_threads_and_keeps_slow_elements_whole(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = InferConfig(output=str(tmp_path))
    assert (config.workers, config.local_threads) == (1, 2)  # ob-infer's default
    p = job.make_pipeline(config)
    values = (
        p
        | beam.Create(list(range(6)))
        | "Wrap" >> beam.Map(SlowToPickle)
        | beam.Reshuffle()  # a stage boundary: the elements are encoded and split over threads
        | "Unwrap" >> beam.Map(lambda s: s.value)
    )
    assert_that(values, equal_to(list(range(6))))
    with caplog.at_level(logging.WARNING):
        p.run().wait_until_finish()
    assert p.runner._num_workers == 2  # two bundles at a time, as multi_threading runs them
    assert "direct_running_mode" not in caplog.text  # Beam's advice does not reach the user
