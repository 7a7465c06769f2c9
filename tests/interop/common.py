"""What the interop scripts share: the transport and JSON-lines output.

Every line a script prints on stdout is one JSON object; the Rust tests read them. Logs and
warnings go to stderr, which the tests show when something fails.
"""

import json
import os
import threading

from oslo_config import cfg
import oslo_messaging

# Listener endpoints run on executor threads: one line at a time.
_EMIT_LOCK = threading.Lock()

# Whether load_config() has run: cfg.CONF can be called once.
_CONFIG_LOADED = False


def load_config():
    """Loads the oslo.config file named by TIDINGS_OSLO_CONFIG_FILE, if set, into the global
    cfg.CONF (once): how a test gives options that live only in configuration, such as
    [oslo_messaging_rabbit] ssl, ssl_ca_file, ssl_cert_file and ssl_key_file.

    Options the drivers register later still read their values from the loaded file.
    """
    global _CONFIG_LOADED
    path = os.environ.get("TIDINGS_OSLO_CONFIG_FILE")
    if path and not _CONFIG_LOADED:
        cfg.CONF(args=[], project="tidings-interop", default_config_files=[path])
        _CONFIG_LOADED = True


def transport(url, allowed_remote_exmods=()):
    """An RPC transport on the global cfg.CONF.

    oslo.messaging 18.3.1 registers its tracing options on the global CONF only: a transport
    built on a private ConfigOpts fails every call and cast.
    """
    load_config()
    return oslo_messaging.get_rpc_transport(
        cfg.CONF, url=url, allowed_remote_exmods=list(allowed_remote_exmods))


def notification_transport(url, exchange=None):
    """A notification transport on the global cfg.CONF whose notifiers publish to `exchange`
    (default: oslo's control exchange, `openstack`).

    A Notifier has no exchange of its own: it uses the control exchange the transport read
    when it was built, so each exchange needs its own transport.
    """
    load_config()
    oslo_messaging.set_transport_defaults(control_exchange=exchange or "openstack")
    return oslo_messaging.get_notification_transport(cfg.CONF, url=url)


def emit(**fields):
    """Prints one JSON line and flushes it at once, so the reader never waits on a buffer."""
    line = json.dumps(fields, sort_keys=True, default=repr)
    with _EMIT_LOCK:
        print(line, flush=True)


def describe(error):
    """An exception as the tests check it: its class and module as Python sees them, its text,
    and, for oslo_messaging.RemoteError, the remote class (exc_type) and message (value)."""
    return {
        "class": type(error).__name__,
        "module": type(error).__module__,
        "message": str(error),
        "args": list(getattr(error, "args", ())),
        "exc_type": getattr(error, "exc_type", None),
        "value": getattr(error, "value", None),
    }
