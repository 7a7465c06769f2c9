"""An oslo.messaging RPC client for the interop tests.

usage: rpc_client.py URL TOPIC OPS_JSON

OPS_JSON is a list of operations, run in order. Each is an object:
  {"id": "...", "op": "call" | "cast", "method": "...", "args": {...}, "context": {...},
   optional "server", "fanout", "version", "namespace", "timeout", "call_monitor_timeout",
   "allowed_remote_exmods": [...]}
Prints one JSON line per operation: {"id", "result"} or {"id", "error": {class, module,
message, args, exc_type, value}}, each with "elapsed" seconds.
"""

import json
import sys
import time

import oslo_messaging

import common


def main():
    url, topic, ops = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    transports = {}

    def client_for(op):
        exmods = tuple(op.get("allowed_remote_exmods", ()))
        if exmods not in transports:
            transports[exmods] = common.transport(url, exmods)
        client = oslo_messaging.get_rpc_client(
            transports[exmods], oslo_messaging.Target(topic=topic))
        overrides = {k: op[k] for k in ("server", "fanout", "version", "namespace",
                                         "timeout", "call_monitor_timeout") if k in op}
        overrides.setdefault("timeout", 15)
        return client.prepare(**overrides)

    for op in ops:
        started = time.monotonic()
        client = client_for(op)
        send = client.call if op["op"] == "call" else client.cast
        try:
            result = send(op.get("context", {}), op["method"], **op.get("args", {}))
        except Exception as error:  # every failure is an outcome the test checks
            outcome = {"error": common.describe(error)}
        else:
            outcome = {"result": result}
        common.emit(id=op["id"], elapsed=time.monotonic() - started, **outcome)
    for transport in transports.values():
        transport.cleanup()


if __name__ == "__main__":
    main()
