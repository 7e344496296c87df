"""Flex Template entry point: run the inference job with the template's parameters.

Dataflow calls this with ``--config=...`` (and any optional parameters from
``flex-template-metadata.json``) plus its own pipeline options; ``run`` passes the latter to Beam.
"""

import sys

from open_buildings.pipelines.job import run

if __name__ == "__main__":
    run([*sys.argv[1:], "--no-wait"])
