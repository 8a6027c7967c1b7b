#!/usr/bin/env python
"""A black box for `orion hunt` in the functional tests: (x - 1)^2 (+ y^2 when given).

Reports through ORION_RESULTS_PATH without importing Oríon (whose import takes
seconds), as examples/blackbox.py does, so each trial takes milliseconds.
"""
import argparse
import json
import os

parser = argparse.ArgumentParser()
parser.add_argument("-x", type=float, required=True)
parser.add_argument("-y", type=float, default=0.0)
args = parser.parse_args()
with open(os.environ["ORION_RESULTS_PATH"], "w") as results:
    json.dump([{"name": "objective", "type": "objective", "value": (args.x - 1) ** 2 + args.y**2}], results)
