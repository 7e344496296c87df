"""Why vmoe's shards are read by hand: peak memory of msgpack.unpackb against the view reader.

``python -m bench.msgpack_shards [--mb 256]`` writes one vmoe-style data shard (flax's msgpack:
a map of array chunks, each an extension holding ``(shape, dtype, bytes)``) of ``--mb`` MB of
float32 in eight arrays, then reads ONE array of it in a fresh process, twice over, interleaved:

- ``views``: ``models.convert.vmoe_shards`` parses the memory-mapped shard with binary and
  extension payloads left as views, and decodes only the array asked for;
- ``msgpack``: ``msgpack.unpackb`` over the same mapped bytes (extension payloads decoded by an
  ``ext_hook``), which copies every binary value out of the buffer.

It prints the resident memory each reader holds once the array is read (VmRSS after, minus
before: the mapped pages it touched plus the copies it keeps) and its wall time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import machine

_MAGIC = "__msgpack_array_chunk_a87ca2__"
_ARRAYS = 8

_CHILD = r"""
import json, mmap, resource, sys, time
import numpy as np
path, reader = sys.argv[1], sys.argv[2]
def rss_mb():  # resident now (VmRSS): mapped pages touched plus every copy still held
    with open("/proc/self/status") as status:
        line = next(l for l in status if l.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024
import msgpack
from open_buildings.models.convert import vmoe_shards
base = rss_mb()
t0 = time.perf_counter()
with open(path, "rb") as handle:
    mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
if reader == "views":
    content = vmoe_shards._unpack_whole(memoryview(mapped))
    (subchunks, _), = content["0"]
    parts = [vmoe_shards._chunk_array(sub, np.dtype("float32")) for sub in subchunks]
else:
    def hook(code, data):
        return msgpack.unpackb(data, raw=False) if code == 1 else msgpack.ExtType(code, data)
    content = msgpack.unpackb(mapped, raw=False, ext_hook=hook, strict_map_key=False)
    (subchunks, _), = content["0"]
    parts = [np.frombuffer(sub[2], dtype=np.float32) for sub in subchunks]
array = np.concatenate(parts)
seconds = time.perf_counter() - t0
print(json.dumps({"rss_mb": rss_mb() - base, "seconds": seconds, "values": int(array.size)}))
"""


def write_shard(path: Path, megabytes: int) -> int:
    """Write ``_ARRAYS`` float32 arrays totalling ``megabytes`` as one shard; return their size."""
    import msgpack
    import numpy as np

    def pack(obj: object) -> bytes:
        return msgpack.packb(obj, use_bin_type=True)

    per_array = megabytes * 2**20 // 4 // _ARRAYS
    rng = np.random.default_rng(0)
    content: dict[str, object] = {_MAGIC: True}
    for number in range(_ARRAYS):
        array = rng.standard_normal(per_array, dtype=np.float32)
        step = 1 << 20  # subchunks of 4 MB
        subchunks = [
            msgpack.ExtType(1, pack(((len(sub),), "float32", sub.tobytes())))
            for sub in (array[i : i + step] for i in range(0, array.size, step))
        ]
        where = msgpack.ExtType(6, pack((pack((0, per_array, None)),)))
        content[str(number)] = [[subchunks, where]]
    path.write_bytes(pack(content))
    return per_array


def measure(path: Path, reader: str) -> dict[str, float]:
    """One read of array 0 by ``reader`` in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), reader],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> None:
    """Write the shard, read it with both readers (interleaved, twice), print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=256, help="shard size in MB")
    args = parser.parse_args(argv)
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ckpt.data-00000-of-00001"
        per_array = write_shard(path, args.mb)
        runs: dict[str, list[dict[str, float]]] = {"views": [], "msgpack": []}
        for _ in range(2):
            for reader in runs:
                result = measure(path, reader)
                assert result["values"] == per_array
                runs[reader].append(result)
    print(f"shard {args.mb} MB, {_ARRAYS} arrays; reading one array ({args.mb / _ARRAYS:.0f} MB):")
    held = {reader: min(r["rss_mb"] for r in results) for reader, results in runs.items()}
    for reader, results in runs.items():
        seconds = min(r["seconds"] for r in results)
        print(f"  {reader:8} resident +{held[reader]:7.1f} MB   {seconds:6.2f} s")
    ratio = held["msgpack"] / max(1.0, held["views"])
    print(f"  msgpack.unpackb holds {ratio:.1f}x the memory of the view reader")


if __name__ == "__main__":
    main()
