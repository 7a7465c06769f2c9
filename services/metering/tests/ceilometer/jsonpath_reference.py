"""jsonpath_rw_ext 1.2.2 (what Ceilometer 27.0.0 parses meters.yaml with) as the reference for
tidings' own parser of the dialect (services/metering/tests/metering_notification_agent.rs).

Reads one JSON object on stdin: {"expressions": [...], "documents": [...]}. Adds every string
JSONPath of Ceilometer's own data/meters.d/meters.yaml to the expressions, and prints one JSON
object: {"meter_paths": [...], "results": [{"expression", "document", and "values" (the
matches' values, in order) or "parse_error" or "find_error"}]}.
"""

import contextlib
import io
import json
import os
import sys

import yaml

import ceilometer
from jsonpath_rw_ext import parser

ATTRIBUTES = ("name", "type", "unit", "volume", "resource_id", "user_id", "project_id",
              "timestamp", "user_metadata")


def meter_paths():
    path = os.path.join(os.path.dirname(ceilometer.__file__), "data", "meters.d", "meters.yaml")
    with open(path) as f:
        metrics = yaml.safe_load(f)["metric"]
    found = set()

    def add(field):
        if isinstance(field, str):
            found.add(field)
        elif isinstance(field, dict):
            fields = field.get("fields")
            if isinstance(fields, list):
                found.update(f for f in fields if isinstance(f, str))
            elif isinstance(fields, str):
                found.add(fields)

    for metric in metrics:
        for attribute in ATTRIBUTES:
            add(metric.get(attribute))
        for value in (metric.get("metadata") or {}).values():
            add(value)
    return sorted(found)


def main():
    request = json.load(sys.stdin)
    paths = meter_paths()
    expressions = paths + [e for e in request["expressions"] if e not in paths]
    results = []
    for expression in expressions:
        try:
            # `sub` prints its repr when parsed.
            with contextlib.redirect_stdout(io.StringIO()):
                compiled = parser.ExtentedJsonPathParser().parse(expression)
        except Exception as error:
            for i, _ in enumerate(request["documents"]):
                results.append({"expression": expression, "document": i,
                                "parse_error": str(error)})
            continue
        for i, document in enumerate(request["documents"]):
            entry = {"expression": expression, "document": i}
            try:
                entry["values"] = [m.value for m in compiled.find(document)]
            except Exception as error:
                entry["find_error"] = "%s: %s" % (type(error).__name__, error)
            results.append(entry)
    print(json.dumps({"meter_paths": paths, "results": results}))


if __name__ == "__main__":
    main()
