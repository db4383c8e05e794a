"""Parses a Prometheus text exposition (stdin) with prometheus_client's parser, checks the
conventions every family must follow, and prints the families as JSON for tests/observability.rs.

Output: {"families": {name: {"type": str, "help": str,
                             "samples": [[sample_name, {label: value}, value], ...]}}}
Exits non-zero, naming the problem, when the text does not parse or breaks a convention.
"""

import json
import math
import re
import sys

from prometheus_client.parser import text_string_to_metric_families

from checks import fail

NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def main():
    text = sys.stdin.read()
    families = {}
    for family in text_string_to_metric_families(text):
        if family.type == "unknown":
            fail(f"{family.name}: no TYPE line, or samples named against it")
        if not family.documentation:
            fail(f"{family.name}: no HELP text")
        if not NAME.match(family.name) or not family.name.startswith("motion_host_"):
            fail(f"{family.name}: not a motion_host_ metric name")
        for sample in family.samples:
            for label in sample.labels:
                if not LABEL.match(label):
                    fail(f"{sample.name}: bad label name {label!r}")
            if family.type == "counter":
                if not sample.name.endswith("_total"):
                    fail(f"counter sample {sample.name} does not end in _total")
                if sample.value < 0:
                    fail(f"counter {sample.name} is negative")
        if family.type == "histogram":
            check_histogram(family)
        if any(unit in family.name for unit in ("_milliseconds", "_ms", "_microseconds")):
            fail(f"{family.name}: not in base units (seconds)")
        families[family.name] = {
            "type": family.type,
            "help": family.documentation,
            "samples": [[s.name, s.labels, s.value] for s in family.samples],
        }
    json.dump({"families": families}, sys.stdout)


def check_histogram(family):
    """Buckets are cumulative, end at +Inf, and +Inf equals _count, for every label set."""
    series = {}
    for s in family.samples:
        key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
        entry = series.setdefault(key, {"buckets": [], "count": None, "sum": None})
        if s.name.endswith("_bucket"):
            entry["buckets"].append((float(s.labels["le"]), s.value))
        elif s.name.endswith("_count"):
            entry["count"] = s.value
        elif s.name.endswith("_sum"):
            entry["sum"] = s.value
    for key, entry in series.items():
        buckets = sorted(entry["buckets"])
        if not buckets or not math.isinf(buckets[-1][0]):
            fail(f"{family.name}{dict(key)}: no +Inf bucket")
        counts = [c for _, c in buckets]
        if counts != sorted(counts):
            fail(f"{family.name}{dict(key)}: buckets are not cumulative: {buckets}")
        if entry["count"] != counts[-1]:
            fail(f"{family.name}{dict(key)}: +Inf bucket {counts[-1]} != _count {entry['count']}")
        if entry["sum"] is None or entry["sum"] < 0:
            fail(f"{family.name}{dict(key)}: no _sum")


if __name__ == "__main__":
    main()
