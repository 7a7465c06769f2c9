"""Ceilometer's own signing, for the Rust tests (services/metering/tests/metering_samples.rs).

Reads one JSON request per line on stdin and prints one JSON answer per line:
- {"op": "sign", "secret": S, "text": T}: json.loads(T), then
  ceilometer.publisher.utils.compute_signature -> {"signature": ...};
- {"op": "meter", "secret": S, "sample": {...}}: a ceilometer.sample.Sample made from the
  fields, then meter_message_from_counter -> {"message": <the meter message>}.
"""

import json
import sys

from ceilometer.publisher import utils
from ceilometer import sample as sample_mod


def main():
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "sign":
            message = json.loads(request["text"])
            answer = {"signature": utils.compute_signature(message, request["secret"])}
        elif request["op"] == "meter":
            fields = request["sample"]
            s = sample_mod.Sample(
                name=fields["name"], type=fields["type"], unit=fields["unit"],
                volume=fields["volume"], user_id=fields["user_id"],
                project_id=fields["project_id"], resource_id=fields["resource_id"],
                timestamp=fields["timestamp"], resource_metadata=fields["resource_metadata"],
                source=fields.get("source"), id=fields.get("id"),
                user_name=fields.get("user_name"), project_name=fields.get("project_name"),
                monotonic_time=fields.get("monotonic_time"))
            answer = {"message": utils.meter_message_from_counter(s, request["secret"])}
        else:
            answer = {"error": "unknown op %r" % request["op"]}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
