"""``make bench``: run every chapter's ``bench()`` and print its claims, targets and measurements.

``python -m effdl.report`` runs all chapters, ``--only quant_cnn prune_structured`` some of them.
Every row is measured in this run on this machine (baselines come from the zoo's cache, trained on
first use). The table ends with ``targets met: N of M``; the command exits with status 1 when a
claim fails or a target is missed, and a known miss stays listed with the section that explains it.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from effdl import claims, experiments
from effdl.config import mode


def run(names: list[str]) -> dict[str, list[claims.Record]]:
    """The records of each named chapter's ``bench()``; failing claims are recorded, not raised."""
    chapters = experiments.chapters()
    results = {}
    for name in names:
        claims.clear()
        with claims.collecting():
            chapters[name].bench()
        results[name] = claims.records()
    return results


def judged(results: dict[str, list[claims.Record]]) -> list[claims.Record]:
    """Every record with a verdict: claims, and targets (which are judged in full mode only)."""
    return [r for records in results.values() for r in records if r.met is not None]


def format_table(results: dict[str, list[claims.Record]]) -> str:
    lines = []
    for name, records in results.items():
        lines += [f"== {name}", *(record.line() for record in records)]
    verdicts = judged(results)
    lines.append(f"targets met: {sum(r.met for r in verdicts)} of {len(verdicts)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    chapters = list(experiments.chapters())
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results/bench.json"))
    parser.add_argument("--only", choices=chapters, nargs="+", metavar="CHAPTER",
                        help=f"run only these chapters: {', '.join(chapters)}")  # fmt: skip
    args = parser.parse_args(argv)
    print(f"Efficient Models bench ({mode()} mode, {torch.get_num_threads()} threads)", flush=True)
    results = run(args.only or chapters)
    print(format_table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"mode": mode(), "threads": torch.get_num_threads(),
               "chapters": {name: [asdict(r) for r in records] for name, records in results.items()}}  # fmt: skip
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"written to {args.out}")
    return 0 if all(r.met for r in judged(results)) else 1


if __name__ == "__main__":
    sys.exit(main())
