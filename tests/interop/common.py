"""What the interop scripts share: the transport and JSON-lines output.

Every line a script prints on stdout is one JSON object; the Rust tests read them. Logs and
warnings go to stderr, which the tests show when something fails.
"""

import json

from oslo_config import cfg
import oslo_messaging


def transport(url, allowed_remote_exmods=()):
    """An RPC transport on the global cfg.CONF.

    oslo.messaging 18.3.1 registers its tracing options on the global CONF only: a transport
    built on a private ConfigOpts fails every call and cast.
    """
    return oslo_messaging.get_rpc_transport(
        cfg.CONF, url=url, allowed_remote_exmods=list(allowed_remote_exmods))


def emit(**fields):
    """Prints one JSON line and flushes it at once, so the reader never waits on a buffer."""
    print(json.dumps(fields, sort_keys=True, default=repr), flush=True)


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
