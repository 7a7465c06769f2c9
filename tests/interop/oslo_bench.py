"""oslo.messaging's figures for the `tidings bench` call and cast scenarios, on the same broker.

usage: oslo_bench.py [URL] [--duration SECS] [--json FILE]

URL defaults to $TIDINGS_TRANSPORT_URL, else the local broker (then in a private vhost).

Runs, in one process as `tidings bench` does, an RPC server (threading executor, oslo's default
pool of 64 threads) and a client on transports of their own (a send connection pool of 66, so no
client thread waits for a connection), and times:
  call-1   one call at a time                       (µs/call)
  call-64  64 client threads calling at once          (calls/s)
  cast     64 client threads casting; counted when the server handled every cast (msgs/s)
with the same keyword arguments and context as `tidings bench` (oslo JSON is the only codec
oslo.messaging speaks). `tidings-bench` runs it in its `oslo` section, on its own broker and vhost;
by hand, run it with the interop venv:

  .venv/interop/bin/python tests/interop/oslo_bench.py rabbit://guest:guest@127.0.0.1:5672/
"""

import argparse
import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid

import oslo_messaging
from oslo_config import cfg
from oslo_messaging._drivers import impl_rabbit

import common

PAYLOAD = {
    "instance_id": "0b6f1c2e-5a8d-4a43-9e51-3c1f0e4c2b7a",
    "host": "compute-17",
    "flavor": {"vcpus": 2, "ram": 2048, "disk": 20},
    "tags": ["bench", "tidings"],
    "count": 42,
}
CONTEXT = {
    "user_id": "u-bench",
    "project_id": "p-bench",
    "request_id": "req-5c2e9a4f-0d2b-4f7e-8c1a-6b3d9e0f1a2b",
}
THREADS = 64
DEFAULT_URL = "rabbit://guest:guest@127.0.0.1:5672/"


def rabbitmqctl(*args):
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True)


class Endpoint:
    def __init__(self):
        self.handled = 0
        self.changed = threading.Condition()

    def echo(self, ctxt, payload):
        return payload

    def note(self, ctxt, payload):
        with self.changed:
            self.handled += 1
            self.changed.notify_all()

    def wait_for(self, count, timeout=120):
        with self.changed:
            if not self.changed.wait_for(lambda: self.handled >= count, timeout):
                raise RuntimeError(f"server handled {self.handled} of {count} casts")


def call_1(client, duration):
    calls = 0
    start = time.perf_counter()
    while time.perf_counter() - start < duration or calls == 0:
        client.call(CONTEXT, "echo", payload=PAYLOAD)
        calls += 1
    return (time.perf_counter() - start) * 1e6 / calls


def in_threads(work, duration):
    """Runs work() in THREADS threads until duration is over; returns completions per second."""
    deadline = time.perf_counter() + duration
    counts = [0] * THREADS

    def loop(i):
        while time.perf_counter() < deadline:
            work()
            counts[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(THREADS)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts), time.perf_counter() - start, start


def call_64(client, duration):
    done, elapsed, _ = in_threads(
        lambda: client.call(CONTEXT, "echo", payload=PAYLOAD), duration)
    return done / elapsed


def cast(client, endpoint, duration):
    before = endpoint.handled
    sent, _, start = in_threads(
        lambda: client.cast(CONTEXT, "note", payload=PAYLOAD), duration)
    endpoint.wait_for(before + sent)
    return sent / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # From the environment, as tidings-bench passes it: a password on a command line is visible
    # to every user of the machine.
    parser.add_argument("url", nargs="?",
                        default=os.environ.get("TIDINGS_TRANSPORT_URL") or DEFAULT_URL)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--json",
                        help="write {scenario: {oslo, unit}} and version to this file")
    args = parser.parse_args()
    # As `tidings bench` does: on the default local broker, a private vhost for the run.
    vhost = None
    if args.url == DEFAULT_URL:
        vhost = f"tidings-bench-{uuid.uuid4().hex}"
        rabbitmqctl("add_vhost", vhost)
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        args.url = DEFAULT_URL + vhost
    try:
        return run(args)
    finally:
        if vhost:
            rabbitmqctl("delete_vhost", vhost)


def run(args):
    # A sending connection for each of the 64 client threads, as an operator running 64 callers
    # would configure (the default pool of 30 makes the rest open and close connections).
    cfg.CONF.register_opts(impl_rabbit.rabbit_opts, group="oslo_messaging_rabbit")
    cfg.CONF.set_override("rpc_conn_pool_size", THREADS + 2, group="oslo_messaging_rabbit")
    # The teardown's reconnect notices are not figures.
    logging.getLogger("oslo_messaging").setLevel(logging.CRITICAL)
    topic = f"oslo-bench-{uuid.uuid4().hex}"
    endpoint = Endpoint()
    server = oslo_messaging.get_rpc_server(
        common.transport(args.url), oslo_messaging.Target(topic=topic, server="bench"),
        [endpoint], executor="threading")
    server.start()
    client = oslo_messaging.get_rpc_client(
        common.transport(args.url), oslo_messaging.Target(topic=topic), timeout=30)
    warm_up = min(max(args.duration / 10, 0.05), 0.5)
    results = {}
    try:
        call_1(client, warm_up)
        results["call-1/json"] = (call_1(client, args.duration), "µs/call")
        call_64(client, warm_up)
        results["call-64/json"] = (call_64(client, args.duration), "calls/s")
        cast(client, endpoint, warm_up)
        results["cast/json"] = (cast(client, endpoint, args.duration), "msgs/s")
    finally:
        server.stop()
        server.wait()

    version = __import__("importlib.metadata").metadata.version("oslo.messaging")
    print(f"oslo.messaging {version}, threading executor, {args.duration} s per scenario")
    print(f"{'scenario':<14} {'oslo':>12}  unit")
    for name, (figure, unit) in results.items():
        print(f"{name:<14} {figure:>12.1f}  {unit}")
    if args.json:
        figures = {k: {"oslo": v, "unit": u} for k, (v, u) in results.items()}
        with open(args.json, "w") as out:
            json.dump({**figures, "version": version}, out, indent=2, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
