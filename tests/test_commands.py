"""run_command: the project's errors and OSError are exit 2 with a message; bugs stay tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from open_buildings.commands import EXIT_REFUSED, run_command
from open_buildings.commands import tiles as ob_tiles
from open_buildings.errors import ConfigError, OutputExistsError, RegionError


def _raise(exc: BaseException):
    def body(args: object) -> int:
        raise exc

    return body


@pytest.mark.parametrize(
    "exc",
    [
        RegionError("feature 0: the ring is not closed; close it"),
        ConfigError("unknown key 'stepz'"),
        OutputExistsError("out.geojson exists; pass --overwrite"),
        FileNotFoundError(2, "No such file or directory", "missing.tif"),
        PermissionError(13, "Permission denied", "/root/out"),
    ],
)
def test_project_errors_and_os_errors_are_exit_2_with_the_message(exc, capsys) -> None:
    assert run_command("ob-test", _raise(exc), None) == EXIT_REFUSED == 2
    err = capsys.readouterr().err
    assert err.startswith("ob-test: error: ") and str(exc) in err


@pytest.mark.parametrize(
    "exc", [ValueError("a bug"), KeyError("k"), TypeError("t"), ZeroDivisionError()]
)
def test_an_internal_error_is_not_turned_into_bad_input(exc) -> None:
    with pytest.raises(type(exc)):
        run_command("ob-test", _raise(exc), None)


def test_the_body_status_passes_through() -> None:
    assert run_command("ob-test", lambda args: args, 0) == 0
    assert run_command("ob-test", lambda args: args, 1) == 1


def test_a_bad_level_is_a_message_not_a_traceback(tmp_path: Path, capsys) -> None:
    region = Path(__file__).resolve().parents[1] / "geo" / "sample" / "region.geojson"
    assert ob_tiles.main([str(region), "--level", "40"]) == 2
    assert "--level" in capsys.readouterr().err


def test_a_console_script_exits_1_with_a_traceback_on_a_bug(tmp_path: Path) -> None:
    # A bug inside a command: run_command must let it through to Python's own handler.
    code = (
        "from open_buildings.commands import run_command\n"
        "def body(args):\n"
        "    return {}['missing']\n"
        "raise SystemExit(run_command('ob-x', body, None))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "KeyError" in done.stderr
    assert "ob-x: error" not in done.stderr


def test_beams_harmless_warnings_are_dropped_and_others_kept(caplog) -> None:
    import logging

    import open_buildings.commands  # noqa: F401  (installs the filter on the root logger)

    with caplog.at_level(logging.WARNING):
        logging.warning("This output type hint will be ignored and not used for type-checking")
        logging.warning("Resource module is not available for current platform")
        logging.warning("a tile could not be read")
    assert [r.getMessage() for r in caplog.records] == ["a tile could not be read"]
