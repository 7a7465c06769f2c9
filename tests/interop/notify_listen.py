"""An oslo.messaging notification listener for the interop tests.

usage: notify_listen.py URL CONFIG_JSON

CONFIG_JSON: {"targets": [{"topic": "...", optional "exchange": "..."}],
              "priorities": ["info", ...],   the endpoint's methods (what it subscribes to)
              optional "pool": "...", "allow_requeue": bool,
              "requeue_first": bool,           REQUEUE a message_id the first time, then HANDLED
              "batch": {"size": N, "timeout": seconds}}   a batch listener
Listens with the threading executor. Prints {"event": "ready"} once its queues exist, then one
line per endpoint call until stdin closes, then stops cleanly:
  {"event": "notification", "priority", "ctxt", "publisher_id", "event_type", "payload",
   "metadata", "result"}
  {"event": "batch", "priority", "messages": [{"ctxt", "publisher_id", "event_type",
   "payload", "metadata"}, ...]}
"""

import json
import sys
import threading

import oslo_messaging
from oslo_messaging import NotificationResult

import common


class Endpoint:
    def __init__(self, requeue_first):
        self.requeue_first = requeue_first
        self.lock = threading.Lock()
        self.requeued = set()

    def handle(self, priority, ctxt, publisher_id, event_type, payload, metadata):
        result = NotificationResult.HANDLED
        if self.requeue_first:
            with self.lock:
                if metadata["message_id"] not in self.requeued:
                    self.requeued.add(metadata["message_id"])
                    result = NotificationResult.REQUEUE
        common.emit(event="notification", priority=priority, ctxt=ctxt,
                    publisher_id=publisher_id, event_type=event_type, payload=payload,
                    metadata=metadata, result=result)
        return result


def endpoint_class(priorities, batch):
    """An endpoint class with a method for each of `priorities` only: oslo subscribes to the
    priorities its endpoints have methods for."""
    def method(priority):
        if batch:
            def on_batch(self, messages):
                common.emit(event="batch", priority=priority, messages=messages)
                return NotificationResult.HANDLED
            return on_batch

        def on_one(self, ctxt, publisher_id, event_type, payload, metadata):
            return self.handle(priority, ctxt, publisher_id, event_type, payload, metadata)
        return on_one
    return type("Endpoint", (Endpoint,), {p: method(p) for p in priorities})


def main():
    url, config = sys.argv[1], json.loads(sys.argv[2])
    targets = [oslo_messaging.Target(topic=t["topic"], exchange=t.get("exchange"))
               for t in config["targets"]]
    batch = config.get("batch")
    endpoint = endpoint_class(config["priorities"], batch)(config.get("requeue_first", False))
    options = dict(executor="threading", allow_requeue=config.get("allow_requeue", False),
                   pool=config.get("pool"))
    transport = common.notification_transport(url)
    if batch:
        listener = oslo_messaging.get_batch_notification_listener(
            transport, targets, [endpoint], batch_size=batch["size"],
            batch_timeout=batch["timeout"], **options)
    else:
        listener = oslo_messaging.get_notification_listener(
            transport, targets, [endpoint], **options)
    listener.start()
    common.emit(event="ready", config=config)
    sys.stdin.read()
    listener.stop()
    listener.wait()
    transport.cleanup()


if __name__ == "__main__":
    main()
