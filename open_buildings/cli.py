"""Console entry points (placeholder, replaced below)."""
import sys

def _stub(name: str, issue: int) -> int:
    print(f"{name} is not built yet: it is coming with issue #{issue}.", file=sys.stderr)
    return 2

def infer_main() -> int: return _stub("ob-infer", 6)
def train_main() -> int: return _stub("ob-train", 5)
def eval_main() -> int: return _stub("ob-eval", 4)
def download_main() -> int: return _stub("ob-download", 6)
def tiles_main() -> int: return _stub("ob-tiles", 2)
