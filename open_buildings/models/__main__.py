"""``python -m open_buildings.models``: list the registered models with parameter counts."""

from __future__ import annotations

import sys

from open_buildings.models.registry import format_models_table


def main(argv: list[str] | None = None) -> int:
    """Print the model registry as a table.

    Args:
        argv: Unused; present so a console script can call ``main()``.

    Returns:
        The process exit status (0).
    """
    del argv
    print(format_models_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
