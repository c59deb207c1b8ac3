"""`python -m bench` (`make bench`): run every benchmark in bench/ and print its figures.

    python -m bench                      # all of them
    python -m bench xds_scale            # only these
    python -m bench xds_scale -- --clients 200 --no-write
    python -m bench -- --quick           # every benchmark at smoke size

Each `bench/<name>.py` (not starting with "_") runs as its own process, one
after the other, so one benchmark's processes and memory cannot skew the
next. Arguments after `--` go to every benchmark; a failing benchmark is
reported and the others still run. The exit status is non-zero if any failed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def benchmarks() -> list[Path]:
    return sorted(p for p in HERE.glob("*.py") if not p.name.startswith("_"))


def main(argv: list[str]) -> int:
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    only = argv[: argv.index("--")] if "--" in argv else argv
    known = [p.stem for p in benchmarks()]
    unknown = [o for o in only if o not in known]
    if unknown:
        print(f"no benchmark named {', '.join(unknown)} (there are: {', '.join(known)})")
        return 2
    failed = []
    for path in benchmarks():
        if only and path.stem not in only:
            continue
        print(f"== {path.stem} ==", flush=True)
        t0 = time.monotonic()
        code = subprocess.call([sys.executable, str(path), *extra], cwd=HERE.parent)
        print(f"== {path.stem}: {'ok' if code == 0 else f'FAILED (exit {code})'} in {time.monotonic() - t0:.0f} s ==\n",
              flush=True)
        if code != 0:
            failed.append(path.stem)
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
