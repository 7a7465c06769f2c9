//! `tidings notify` and `tidings listen`: notifications from the shell.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use super::admin::{self, AdminArgs};
use super::exit;
use serde_json::{json, Value};
use tidings::codec::NotificationFormat;
use tidings::notify::{
    IncomingNotification, NotificationEndpoint, NotificationListener, Notifier, Outcome, Priority,
};
use tidings::{Context, Target, Transport};
use tidings_metering::secrets;
use tokio::sync::mpsc;

/// Arguments of `tidings notify`.
#[derive(Debug, clap::Args)]
pub struct NotifyArgs {
    /// Transport URL.
    #[arg(long, visible_alias = "transport-url", env = "TIDINGS_TRANSPORT_URL")]
    url: String,
    /// Exchange (default: the control exchange, `openstack`).
    #[arg(long)]
    exchange: Option<String>,
    /// Topic, e.g. `notifications`.
    #[arg(long)]
    topic: String,
    /// audit, debug, info, warn, error, critical or sample.
    #[arg(long)]
    priority: Priority,
    /// Event type, e.g. `compute.instance.create.end`.
    #[arg(long)]
    event_type: String,
    /// Publisher id, e.g. `compute.host-1`.
    #[arg(long)]
    publisher_id: String,
    /// Send a bare v1 body (oslo's `messaging` driver) instead of the v2 envelope.
    #[arg(long)]
    v1: bool,
    /// Context as a JSON object.
    #[arg(long)]
    context: Option<String>,
    /// Payload, any JSON value.
    payload: String,
}

/// Arguments of `tidings listen`.
#[derive(Debug, clap::Args)]
pub struct ListenArgs {
    /// Transport URL.
    #[arg(long, visible_alias = "transport-url", env = "TIDINGS_TRANSPORT_URL")]
    url: String,
    /// Exchange (default: the control exchange, `openstack`).
    #[arg(long)]
    exchange: Option<String>,
    /// Topic, e.g. `notifications`.
    #[arg(long)]
    topic: String,
    /// Listener pool: a queue of its own that gets a copy of every notification.
    #[arg(long)]
    pool: Option<String>,
    /// Exit after this many notifications (default: run until interrupted).
    #[arg(long)]
    count: Option<u64>,
    /// Print secrets as they came: context keys such as auth_token, and credentials in URLs
    /// (masked as "***" by default).
    #[arg(long)]
    show_secrets: bool,
    #[command(flatten)]
    admin: AdminArgs,
}

pub async fn run_notify(args: NotifyArgs) -> ExitCode {
    let payload: Value = match serde_json::from_str(&args.payload) {
        Ok(payload) => payload,
        Err(error) => return fail(format!("PAYLOAD_JSON is not valid JSON: {error}")),
    };
    let context = match args.context.as_deref().map(serde_json::from_str::<Value>) {
        None => Context::new(),
        Some(Ok(Value::Object(map))) => Context::from(map),
        Some(_) => return fail("--context must be a JSON object".to_owned()),
    };
    let transport = match Transport::connect(&args.url).await {
        Ok(transport) => transport,
        Err(error) => return fail(format!("cannot open the transport: {error}")),
    };
    let mut notifier = Notifier::new(&transport, args.publisher_id).topics([args.topic]);
    if let Some(exchange) = args.exchange {
        notifier = notifier.exchange(exchange);
    }
    if args.v1 {
        notifier = notifier.format(NotificationFormat::V1);
    }
    let sent = notifier
        .notify(&context, args.priority, &args.event_type, payload)
        .await;
    transport.close().await;
    match sent {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(error.to_string()),
    }
}

fn fail(message: String) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(exit::CANNOT_RUN)
}

/// One output line per notification; unless `show_secrets`, the values of secret context and
/// payload keys (`auth_token`, `password`…) and credentials in URLs are masked, as
/// oslo.messaging's logging masks them.
fn as_line(n: &IncomingNotification, show_secrets: bool) -> Value {
    let line = json!({
        "priority": n.priority.as_key(),
        "publisher_id": n.publisher_id,
        "event_type": n.event_type,
        "payload": n.payload,
        "metadata": {"message_id": n.metadata.message_id, "timestamp": n.metadata.timestamp},
        "context": n.context,
    });
    if show_secrets {
        line
    } else {
        secrets::mask_json(&line)
    }
}

pub async fn run_listen(args: ListenArgs) -> ExitCode {
    let transport = match Transport::connect(&args.url).await {
        Ok(transport) => transport,
        Err(error) => return fail(format!("cannot open the transport: {error}")),
    };
    let _admin = match args.admin.admin_listen {
        Some(addr) => match admin::start(addr, args.admin.admin_public, None).await {
            Ok(server) => Some(server),
            Err(error) => return fail(error),
        },
        None => None,
    };
    // Lines go through one printer task so that output stays whole and the count is exact;
    // the channel holds one, so a handler only acknowledges what the printer took.
    let (lines, mut printer) = mpsc::channel::<Value>(1);
    let lines = Arc::new(lines);
    let mut endpoint = NotificationEndpoint::new();
    let show_secrets = args.show_secrets;
    for priority in Priority::ALL {
        let lines = lines.clone();
        endpoint = endpoint.on(priority, move |n: IncomingNotification| {
            let lines = lines.clone();
            async move {
                match lines.send(as_line(&n, show_secrets)).await {
                    Ok(()) => Ok(Outcome::Handled),
                    Err(_) => Err("listener is stopping"),
                }
            }
        });
    }
    let mut target = Target::topic(&args.topic);
    target.exchange = args.exchange;
    let mut builder = NotificationListener::builder(&transport, vec![target])
        .endpoint(endpoint)
        .allow_requeue(true)
        .max_concurrency(1);
    if let Some(pool) = args.pool {
        builder = builder.pool(pool);
    }
    let listener = match builder.start().await {
        Ok(listener) => listener,
        Err(error) => return fail(format!("cannot listen: {error}")),
    };
    let mut printed = 0u64;
    loop {
        if args.count.is_some_and(|n| printed >= n) {
            break;
        }
        tokio::select! {
            line = printer.recv() => match line {
                Some(line) => {
                    println!("{line}");
                    printed += 1;
                }
                None => break,
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    printer.close();
    listener.stop(Duration::from_secs(5)).await;
    transport.close().await;
    ExitCode::SUCCESS
}
