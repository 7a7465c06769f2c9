"""An oslo.messaging RPC server for the interop tests.

usage: rpc_server.py URL TOPIC SERVER

Serves the endpoint below (version 1.3, no namespace) on TOPIC as SERVER with the threading
executor. Prints {"event": "ready", ...} once its queues exist, then serves until stdin closes
(the test dropping its handle, or dying) and stops cleanly.
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


class Endpoint:
    target = oslo_messaging.Target(version="1.3")

    def __init__(self, name):
        self.name = name
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


def main():
    url, topic, name = sys.argv[1:4]
    target = oslo_messaging.Target(topic=topic, server=name)
    server = oslo_messaging.get_rpc_server(
        common.transport(url), target, [Endpoint(name)], executor="threading")
    server.start()
    common.emit(event="ready", server=name, topic=topic)
    sys.stdin.read()
    server.stop()
    server.wait()


if __name__ == "__main__":
    main()
