"""An oslo.messaging Notifier for the interop tests.

usage: notify_send.py URL OPS_JSON

OPS_JSON is a list of notifications, sent in order. Each is an object:
  {"id": "...", "driver": "messagingv2" | "messaging", "priority": "info" | "warn" | ...,
   "publisher_id": "...", "event_type": "...", "payload": <any>,
   optional "exchange" (default: the control exchange), "topics" (default ["notifications"]),
   "context": {"request": {RequestContext kwargs}} | {"dict": {...}} (default: None)}
Prints one JSON line per notification: {"id", "sent_context"}, the context as oslo puts it on
the wire (what its notifier's sanitizing makes of the given one).
"""

import json
import sys

from oslo_context import context as oslo_context
import oslo_messaging
from oslo_messaging.notify import notifier as oslo_notifier

import common


def context_of(op):
    spec = op.get("context")
    if spec is None:
        return None
    if "request" in spec:
        return oslo_context.RequestContext(**spec["request"])
    return dict(spec["dict"])


def main():
    url, ops = sys.argv[1], json.loads(sys.argv[2])
    transports = {}
    notifiers = {}

    def notifier_for(op):
        exchange = op.get("exchange")
        if exchange not in transports:
            transports[exchange] = common.notification_transport(url, exchange)
        key = (exchange, op["driver"], tuple(op.get("topics", ["notifications"])))
        if key not in notifiers:
            notifiers[key] = oslo_messaging.Notifier(
                transports[exchange], publisher_id=op["publisher_id"], driver=op["driver"],
                topics=list(key[2]))
        return notifiers[key].prepare(publisher_id=op["publisher_id"])

    for op in ops:
        ctxt = context_of(op)
        send = getattr(notifier_for(op), op["priority"])
        send(ctxt, op["event_type"], op["payload"])
        # oslo's own sanitizing (18.3.1): a dict or None becomes {}, any other context its
        # redacted copy, which the driver flattens with to_dict().
        sent = oslo_notifier._sanitize_context(ctxt)
        common.emit(id=op["id"], sent_context=sent if isinstance(sent, dict) else sent.to_dict())
    for transport in transports.values():
        transport.cleanup()


if __name__ == "__main__":
    main()
