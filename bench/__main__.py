# `make bench`: run every bench/bench_*.py module's run() -> list[Row], print one table.
# `python -m bench core serial` runs only the named modules.
from __future__ import annotations

import importlib
import json
import pkgutil
import sys
from dataclasses import asdict
from pathlib import Path

from .common import Row, print_table


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    names = sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules([str(here)])
                   if m.name.startswith("bench_"))
    chosen = [n for n in names if not argv or n in argv]
    rows: list[Row] = []
    for name in chosen:
        mod = importlib.import_module(f"bench.bench_{name}")
        print(f"# {name} ...", file=sys.stderr, flush=True)
        rows.extend(mod.run())
    print_table(rows)
    (here / "results.json").write_text(json.dumps(
        [{**asdict(r), "ratio": r.ratio, "met": r.met} for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
