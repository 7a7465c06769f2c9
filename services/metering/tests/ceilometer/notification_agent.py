"""Ceilometer 27.0.0's notification agent code as the reference for tidings' agent
(services/metering/tests/metering_notification_agent.rs).

    notification_agent.py TRANSPORT_URL EXCHANGE[,EXCHANGE...]

Listens as Ceilometer's agent does (oslo.messaging's batch notification listener, topic
`notifications` on each exchange), in a listener pool of its own so that it gets a copy of
every notification beside tidings' agent, and runs two ProcessMeterNotifications endpoints
over Ceilometer's own meters.yaml (the package's data/meters.d):
- "ceilometer": exactly as shipped;
- "intended": the same, with the user/project context fallback written as Ceilometer means it
  (`(ctxt.user_id)|(ctxt.user)`; shipped, `ctxt.user_id|ctxt.user` never matches).

For each info or sample notification each endpoint prints one JSON line:
{"variant", "message_id", "event_type", "samples": [meter messages, as the notifier://
publisher sends them]} or {"variant", "message_id", "event_type", "error": "..."} where
Ceilometer raises (it would requeue the notification forever).

Stdin takes JSON lines {"op": "publish", "notifications": [{"exchange", "publisher_id",
"event_type", "priority", "payload", "context": {...}}]}: each is published with
oslo.messaging's Notifier (messagingv2, topic notifications) on its exchange, the context an
oslo.context RequestContext as services send it. Answers {"published": N}.
"""

import json
import sys
import threading

from oslo_config import cfg
from oslo_context import context as context_mod
import oslo_messaging
from stevedore import extension

from ceilometer import declarative
from ceilometer.meter import notifications
from ceilometer.pipeline import sample as pipeline_sample
from ceilometer.publisher import utils
from ceilometer import service as ceilometer_service

SECRET = "change this for valid signing"
_LOCK = threading.Lock()


def emit(**fields):
    with _LOCK:
        print(json.dumps(fields, sort_keys=True, default=repr), flush=True)


class ContextSerializer(oslo_messaging.NoOpSerializer):
    """What nova's RequestContextSerializer does with a context."""

    def serialize_context(self, ctxt):
        return ctxt.to_dict()


class Reference(notifications.ProcessMeterNotifications):
    def __init__(self, conf, variant):
        super().__init__(conf, None)
        self.variant = variant
        if variant == "intended":
            plugins = extension.ExtensionManager(namespace="ceilometer.event.trait_plugin")
            for definition in self.definitions:
                definition._fallback_user_id = declarative.Definition(
                    "user_id", ["ctxt.user_id", "ctxt.user"], plugins)
                definition._fallback_project_id = declarative.Definition(
                    "project_id", ["ctxt.project_id", "ctxt.tenant_id"], plugins)

    def process_notifications(self, priority, notifications_):
        for message in notifications_:
            out = {
                "variant": self.variant,
                "message_id": message["metadata"]["message_id"],
                "event_type": message["event_type"],
            }
            try:
                built = list(self.build_sample(message))
                # The pipeline's volume check, as SamplePipeline.publish_data runs it.
                kept = [s for s in built
                        if pipeline_sample.SamplePipeline._validate_volume(None, s)]
                out["samples"] = [utils.meter_message_from_counter(s, SECRET) for s in kept]
            except Exception as error:  # what Ceilometer's dispatcher would requeue
                out["error"] = "%s: %s" % (type(error).__name__, error)
            emit(**out)


def main():
    url = sys.argv[1]
    exchanges = sys.argv[2].split(",")
    conf = ceilometer_service.prepare_service([], [])
    endpoints = [Reference(conf, "ceilometer"), Reference(conf, "intended")]
    # oslo.messaging 18.3.1 wants the global CONF for its transports.
    cfg.CONF([], project="tidings-notification-reference")
    transport = oslo_messaging.get_notification_transport(cfg.CONF, url=url)
    targets = [oslo_messaging.Target(topic="notifications", exchange=e) for e in exchanges]
    listener = oslo_messaging.get_batch_notification_listener(
        transport, targets, endpoints, executor="threading",
        pool="ceilometer-reference", batch_size=1, batch_timeout=None,
        allow_requeue=False)
    listener.start()
    notifiers = {}
    emit(ready=True, definitions=len(endpoints[0].definitions))
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("op") != "publish":
            emit(error="unknown op %r" % request.get("op"))
            continue
        for n in request["notifications"]:
            exchange = n["exchange"]
            if exchange not in notifiers:
                oslo_messaging.set_transport_defaults(control_exchange=exchange)
                notifiers[exchange] = oslo_messaging.get_notification_transport(cfg.CONF, url=url)
            notifier = oslo_messaging.Notifier(
                notifiers[exchange], publisher_id=n["publisher_id"], driver="messagingv2",
                topics=["notifications"], serializer=ContextSerializer())
            context = context_mod.RequestContext(**n.get("context", {}))
            getattr(notifier, n["priority"].lower())(context, n["event_type"], n["payload"])
        emit(published=len(request["notifications"]))
    listener.stop()
    listener.wait()


if __name__ == "__main__":
    main()
