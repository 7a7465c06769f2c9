"""An oslo.messaging RPC server for the interop tests.

usage: rpc_server.py URL TOPIC SERVER [NAMESPACE VERSION]

Serves the endpoint below (version 1.3, no namespace) on TOPIC as SERVER with the threading
executor; given NAMESPACE and VERSION, also the Inventory endpoint with that target (the typed
contract of tests/contract.rs). Prints {"event": "ready", ...} once its queues exist, then
serves until stdin closes (the test dropping its handle, or dying) and stops cleanly.

Every request is recorded as the dispatcher got it (its message: method, args, namespace,
version; and its context); the `received` method returns those of one method.
"""

import sys
import threading
import time

import oslo_messaging

import common


class InteropError(ValueError):
    """A service's own exception (module __main__), with oslo-style kwargs."""

    def __init__(self, message, code=None):
        super().__init__(message)
        self.kwargs = {"code": code}


class Recorder:
    """Every request the server dispatched, as the dispatcher got it."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = []

    def wrap(self, dispatch):
        def recording(incoming):
            with self.lock:
                self.requests.append({"message": dict(incoming.message),
                                      "context": dict(incoming.ctxt)})
            return dispatch(incoming)
        return recording

    def of(self, method):
        with self.lock:
            return [r for r in self.requests if r["message"].get("method") == method]


class Endpoint:
    target = oslo_messaging.Target(version="1.3")

    def __init__(self, name, recorder):
        self.name = name
        self.recorder = recorder
        self.lock = threading.Lock()
        self.notes = []

    def echo(self, ctxt, x):
        return x

    def context(self, ctxt):
        return ctxt

    def sleep(self, ctxt, secs):
        time.sleep(secs)
        return "slept"

    def note(self, ctxt, text):
        with self.lock:
            self.notes.append(text)

    def seen(self, ctxt):
        """The texts of the `note` casts received so far."""
        with self.lock:
            return list(self.notes)

    def whoami(self, ctxt):
        return self.name

    def fail(self, ctxt, kind, message):
        if kind == "custom":
            raise InteropError(message, code=409)
        raise ValueError(message, 42)

    def received(self, ctxt, method):
        """The requests for `method` received so far: {"message", "context"} each."""
        return self.recorder.of(method)


class Inventory:
    """The Inventory contract of tests/contract.rs, as a Python service implements it."""

    def __init__(self, name, namespace, version):
        self.target = oslo_messaging.Target(namespace=namespace, version=version)
        self.name = name
        self.lock = threading.Lock()
        self.stock = {}
        self.notes = []

    def restock(self, ctxt, sku, count):
        with self.lock:
            self.stock[sku] = self.stock.get(sku, 0) + count
            return {"sku": sku, "count": self.stock[sku]}

    def lookup(self, ctxt, sku):
        with self.lock:
            if sku not in self.stock:
                return None
            return {"sku": sku, "count": self.stock[sku]}

    def quote(self, ctxt, sku, count, unit_price, coupon=None):
        total = count * unit_price
        if coupon is not None:
            total /= 2
        return {"sku": sku, "total": total, "discounted": coupon is not None}

    def note(self, ctxt, text):
        with self.lock:
            self.notes.append(text)

    def notes_seen(self, ctxt):
        with self.lock:
            return list(self.notes)

    def inspect(self, ctxt):
        """What the handler knows of its caller: a Python endpoint has no deadline."""
        parts = (ctxt.get("traceparent") or "").split("-")
        traced = len(parts) == 4
        return {"server": self.name, "time_left_ms": None,
                "trace_id": parts[1] if traced else None,
                "span_id": parts[2] if traced else None}


def main():
    url, topic, name = sys.argv[1:4]
    recorder = Recorder()
    endpoints = [Endpoint(name, recorder)]
    if len(sys.argv) > 4:
        namespace, version = sys.argv[4:6]
        endpoints.append(Inventory(name, namespace, version))
    target = oslo_messaging.Target(topic=topic, server=name)
    server = oslo_messaging.get_rpc_server(
        common.transport(url), target, endpoints, executor="threading")
    server.dispatcher.dispatch = recorder.wrap(server.dispatcher.dispatch)
    server.start()
    common.emit(event="ready", server=name, topic=topic)
    sys.stdin.read()
    server.stop()
    server.wait()


if __name__ == "__main__":
    main()
