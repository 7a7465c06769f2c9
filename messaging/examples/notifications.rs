//! Notifications on the in-memory transport: a `Notifier` publishes billing events; one listener
//! handles `info` events one at a time with two endpoints (one filtered to invoices, one seeing
//! everything), another takes `sample` events in batches.
//!
//! ```sh
//! cargo run -p tidings --example notifications
//! ```

use std::convert::Infallible;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidings::notify::{
    Filter, IncomingNotification, NotificationEndpoint, NotificationListener, Notifier, Outcome,
    Priority,
};
use tidings::{Context, Target, Transport};
use tokio::sync::mpsc;

/// The billing events, named once for publisher and listeners alike.
mod billing {
    /// The topic billing events go to.
    pub const TOPIC: &str = "billing";
    /// Who publishes them.
    pub const PUBLISHER: &str = "billing.host-1";
    /// An invoice was issued (payload: [`Invoice`](super::Invoice)).
    pub const INVOICE_ISSUED: &str = "invoice.issued";
    /// An invoice was paid (payload: [`Invoice`](super::Invoice)).
    pub const INVOICE_PAID: &str = "invoice.paid";
    /// A customer's details changed.
    pub const CUSTOMER_UPDATED: &str = "customer.updated";
    /// A usage sample (payload: [`Usage`](super::Usage)).
    pub const USAGE: &str = "usage.sample";
}

/// Payload of the invoice events.
#[derive(Debug, Serialize, Deserialize)]
struct Invoice {
    number: u32,
    cents: i64,
}

/// Payload of a usage sample.
#[derive(Debug, Serialize, Deserialize)]
struct Usage {
    meter: String,
    value: f64,
}

/// Samples published; the batch listener must see every one of them.
const SAMPLES: usize = 5;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let transport = Transport::connect("memory://notifications").await?;
    let targets = vec![Target::topic(billing::TOPIC)];

    // Info events, one at a time. Every endpoint that handles a priority and accepts the
    // notification is called: `invoices` only sees what its filter lets through, `audit` sees
    // everything. Handlers report to `main` through channels.
    let (invoices_seen, mut invoices) = mpsc::unbounded_channel::<Invoice>();
    let (audit_seen, mut audit) = mpsc::unbounded_channel::<String>();
    let invoice_endpoint = NotificationEndpoint::new()
        .filter(Filter::new().event_type(r"invoice\.")?)
        .on(Priority::Info, move |notification: IncomingNotification| {
            let seen = invoices_seen.clone();
            async move {
                // A payload that does not fit is a handler error: the listener logs it and,
                // since requeue is not allowed here, acknowledges the message.
                let invoice: Invoice = notification.payload_as()?;
                let _ = seen.send(invoice);
                Ok::<_, serde_json::Error>(Outcome::Handled)
            }
        });
    let audit_endpoint = NotificationEndpoint::new().on(
        Priority::Info,
        move |notification: IncomingNotification| {
            let seen = audit_seen.clone();
            async move {
                let _ = seen.send(notification.event_type);
                Ok::<_, Infallible>(Outcome::Handled)
            }
        },
    );
    let events = NotificationListener::builder(&transport, targets.clone())
        .endpoint(invoice_endpoint)
        .endpoint(audit_endpoint)
        .start()
        .await?;

    // Samples in batches: up to 100 at a time, waiting at most half a second after the first
    // of a batch. One handler call settles its whole batch.
    let (batches_seen, mut batches) = mpsc::unbounded_channel::<Vec<Usage>>();
    let sample_endpoint = NotificationEndpoint::new().on_batch(
        Priority::Sample,
        move |notifications: Vec<IncomingNotification>| {
            let seen = batches_seen.clone();
            async move {
                let batch = notifications
                    .iter()
                    .map(IncomingNotification::payload_as)
                    .collect::<Result<Vec<Usage>, _>>()?;
                let _ = seen.send(batch);
                Ok::<_, serde_json::Error>(Outcome::Handled)
            }
        },
    );
    let samples = NotificationListener::builder(&transport, targets)
        .batch(100, Duration::from_millis(500))
        .endpoint(sample_endpoint)
        .start()
        .await?;

    // Publish. A notifier is cheap to clone and carries its publisher id and topics.
    let notifier = Notifier::new(&transport, billing::PUBLISHER).topics([billing::TOPIC]);
    let ctx = Context::new().with("request_id", "req-notifications");
    notifier
        .info(
            &ctx,
            billing::CUSTOMER_UPDATED,
            serde_json::json!({"customer": "c-9"}),
        )
        .await?;
    for (number, event) in [(41, billing::INVOICE_ISSUED), (41, billing::INVOICE_PAID)] {
        let invoice = Invoice {
            number,
            cents: 1250,
        };
        notifier.info(&ctx, event, invoice).await?;
    }
    for _ in 0..SAMPLES {
        let usage = Usage {
            meter: "cpu".to_owned(),
            value: 0.25,
        };
        notifier.sample(&ctx, billing::USAGE, usage).await?;
    }

    // Both invoice events reach the filtered endpoint; all three info events reach `audit`.
    let within = Duration::from_secs(5);
    for _ in 0..2 {
        let invoice = tokio::time::timeout(within, invoices.recv())
            .await?
            .ok_or("the info listener stopped")?;
        assert_eq!(invoice.number, 41);
    }
    let mut audited = Vec::new();
    for _ in 0..3 {
        let event_type = tokio::time::timeout(within, audit.recv())
            .await?
            .ok_or("the info listener stopped")?;
        audited.push(event_type);
    }
    audited.sort();
    assert_eq!(
        audited,
        [
            billing::CUSTOMER_UPDATED,
            billing::INVOICE_ISSUED,
            billing::INVOICE_PAID
        ]
    );

    // Every sample arrives, in fewer handler calls than samples.
    let mut sizes = Vec::new();
    while sizes.iter().sum::<usize>() < SAMPLES {
        let batch = tokio::time::timeout(within, batches.recv())
            .await?
            .ok_or("the sample listener stopped")?;
        assert!(batch.iter().all(|usage| usage.meter == "cpu"));
        sizes.push(batch.len());
    }
    assert_eq!(sizes.iter().sum::<usize>(), SAMPLES);
    assert!(sizes.len() < SAMPLES, "samples were not batched: {sizes:?}");
    println!("{SAMPLES} samples in batches of {sizes:?}");

    events.stop(Duration::from_secs(5)).await;
    samples.stop(Duration::from_secs(5)).await;

    // Once stopped, nothing more is handled: the filter kept `customer.updated` away from the
    // invoice endpoint.
    assert!(invoices.try_recv().is_err());
    println!("invoices saw 2 events, audit saw {audited:?}");
    Ok(())
}
