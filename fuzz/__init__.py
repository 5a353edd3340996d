# Coverage-guided fuzz harnesses (atheris): `make fuzz-atheris`. Each module exposes
# TestOneInput(bytes) and runs under atheris when executed; tests import them to run the same
# function over generated inputs without atheris.

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path


def run_atheris(seeds: list[bytes], test_one_input: Callable[[bytes], None]) -> None:
    """Run a harness under atheris; an empty corpus folder on the command line gets seeds."""
    import atheris  # type: ignore[import-not-found, import-untyped, unused-ignore]

    for arg in sys.argv[1:]:
        folder = Path(arg)
        if not arg.startswith("-") and folder.is_dir() and not any(folder.iterdir()):
            for i, data in enumerate(seeds):
                (folder / f"seed-{i}").write_bytes(data)
    atheris.instrument_all()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
