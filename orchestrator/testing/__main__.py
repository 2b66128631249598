"""``python -m qdcavity.testing BACKEND [CASE ...] [--option KEY=VALUE ...]``: run the
conformance suite on an installed backend and print the report (exit 1 on a failure)."""

from __future__ import annotations

import argparse
import sys

from ..cli import parse_assignment
from ..errors import QdcavityError
from .conformance import CASES, run_conformance


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qdcavity.testing",
                                     description="qdcavity backend conformance suite")
    parser.add_argument("backend", help="registered backend name")
    parser.add_argument("cases", nargs="*",
                        help=f"case ids, categories or glob patterns (default: all that apply; "
                             f"cases: {', '.join(CASES)})")
    parser.add_argument("--option", type=parse_assignment, action="append", default=[],
                        metavar="KEY=VALUE", help="backend option for every run (repeatable)")
    args = parser.parse_args(argv)
    try:
        report = run_conformance(args.backend, args.cases or None, options=dict(args.option))
    except QdcavityError as exc:
        print(f"qdcavity.testing: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
