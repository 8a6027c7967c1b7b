#!/usr/bin/env python
"""A black-box objective for `orion hunt`: the Rosenbrock function of -x and -y.

Its minimum, 0, is at x=1, y=1. Oríon runs this script once per trial. It
reports through Oríon's results file (the ORION_RESULTS_PATH that
`orion.client.report_objective` writes) without importing Oríon, whose import
alone takes seconds: the demo's trials then take milliseconds each.
"""
import argparse
import json
import os


def rosenbrock(x: float, y: float) -> float:
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def report_objective(value: float) -> None:
    """What orion.client.report_objective does, in four lines."""
    with open(os.environ["ORION_RESULTS_PATH"], "w") as results:
        json.dump([{"name": "objective", "type": "objective", "value": value}], results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-x", type=float, required=True)
    parser.add_argument("-y", type=float, required=True)
    args = parser.parse_args()
    report_objective(rosenbrock(args.x, args.y))


if __name__ == "__main__":
    main()
