//! `tidings demo` and `tidings demo-server`.

use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};
use tidings::rpc::{RpcClient, RpcServer};
use tidings::{Context, Target, Transport};
use tidings_compat::BlockingPool;
use tidings_jobs::JobRunner;

use super::admin::{self, AdminArgs};
use super::exit;
use crate::demo;

/// How long a stopping server waits for calls in flight.
const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

/// Blocking threads of the in-process demo (it makes one blocking call).
const DEMO_POOL_SIZE: usize = 4;

/// Arguments of `tidings demo-server`.
#[derive(Debug, clap::Args)]
pub struct DemoServerArgs {
    /// Transport URL (rabbit://…, amqp://…, memory://NAME).
    #[arg(long, visible_alias = "transport-url", env = "TIDINGS_TRANSPORT_URL")]
    url: String,
    /// Topic to serve.
    #[arg(long)]
    topic: String,
    /// This server's name (its own queue is TOPIC.SERVER).
    #[arg(long)]
    server: String,
    /// Exchange (default: the control exchange, `openstack`).
    #[arg(long)]
    exchange: Option<String>,
    #[command(flatten)]
    admin: AdminArgs,
}

pub async fn run_demo_server(args: DemoServerArgs) -> ExitCode {
    let transport = match Transport::connect(&args.url).await {
        Ok(transport) => transport,
        Err(error) => {
            eprintln!("error: cannot open {}: {error}", redact(&args.url));
            return ExitCode::from(exit::CANNOT_RUN);
        }
    };
    let mut target = Target::topic(&args.topic).with_server(&args.server);
    target.exchange = args.exchange;
    // oslo's executor_thread_pool_size: 64 threads for the blocking method.
    let pool = match BlockingPool::new(tidings_compat::DEFAULT_POOL_SIZE) {
        Ok(pool) => pool,
        Err(error) => {
            eprintln!("error: cannot start the blocking pool: {error}");
            return ExitCode::from(exit::CANNOT_RUN);
        }
    };
    // The same methods as jobs too (`tidings job run`), each part with its own id.
    let endpoint = demo::endpoint(&pool);
    let jobs = JobRunner::new(&target, vec![endpoint.clone()]);
    let server = match RpcServer::builder(&transport, target.clone())
        .max_concurrency(demo::max_concurrency(&pool))
        .endpoint(endpoint)
        .endpoint(jobs.endpoint())
        .start()
        .await
    {
        Ok(server) => server,
        Err(error) => {
            eprintln!("error: cannot serve {target}: {error}");
            return ExitCode::from(exit::CANNOT_RUN);
        }
    };
    let _admin = match args.admin.admin_listen {
        Some(addr) => match admin::start(addr, args.admin.admin_public, None).await {
            Ok(server) => Some(server),
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::from(exit::CANNOT_RUN);
            }
        },
        None => None,
    };
    eprintln!("serving demo methods on {target} at {}", transport.url());
    tokio::select! {
        () = shutdown_signal() => eprintln!("stopping: finishing calls in flight"),
        () = server.stopped() => {
            eprintln!("error: the transport stopped delivering requests");
            return ExitCode::from(exit::CANNOT_RUN);
        }
    }
    let report = server.stop(DRAIN_DEADLINE).await;
    eprintln!(
        "stopped: {} finished, {} abandoned",
        report.finished, report.abandoned
    );
    transport.close().await;
    ExitCode::SUCCESS
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn redact(url: &str) -> String {
    url.parse::<tidings::TransportUrl>()
        .map(|u| u.to_string())
        .unwrap_or_else(|_| "<invalid URL>".to_owned())
}

/// Starts the demo server on `memory://demo`, calls each method, prints what happens.
pub async fn run_demo() -> ExitCode {
    match demo_steps().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("demo failed: {error}");
            ExitCode::from(exit::FAILED)
        }
    }
}

async fn demo_steps() -> Result<(), Box<dyn std::error::Error>> {
    let transport = Transport::connect("memory://demo").await?;
    let target = Target::topic("demo").with_server("demo-1");
    let pool = BlockingPool::new(DEMO_POOL_SIZE)?;
    let server = RpcServer::builder(&transport, target.clone())
        .max_concurrency(demo::max_concurrency(&pool))
        .endpoint(demo::endpoint(&pool))
        .start()
        .await?;
    println!(
        "demo server listening on {target} (memory://demo), version {}",
        demo::DEMO_VERSION
    );

    let client = RpcClient::new(&transport, Target::topic("demo"))
        .version(demo::DEMO_VERSION)
        .timeout(Duration::from_secs(5));
    let ctx = Context::new()
        .with("request_id", "req-demo-1")
        .with("auth_token", "never-printed");
    println!("context sent with every call: {ctx}");

    let echoed: Value = client
        .call(
            &ctx,
            "echo",
            json!({"x": {"hello": ["wörld", 1, 2.5, null]}}),
        )
        .await?;
    println!("call echo(x={{\"hello\": [...]}}) -> {echoed}");

    let sum: Value = client.call(&ctx, "add", json!({"a": 40, "b": 2})).await?;
    println!("call add(a=40, b=2) -> {sum}");

    match client
        .call::<Value>(&ctx, "fail", json!({"message": "as asked"}))
        .await
    {
        Err(error) => match error.remote() {
            Some(remote) => println!(
                "call fail(message=\"as asked\") -> remote error class={} module={} message={:?}",
                remote.class, remote.module, remote.message
            ),
            None => return Err(error.into()),
        },
        Ok(value) => return Err(format!("fail returned {value} instead of an error").into()),
    }

    let done: Value = client.call(&ctx, "slow", json!({"secs": 0.2})).await?;
    println!("call slow(secs=0.2) -> {done}");

    let done: Value = client
        .call(&ctx, "blocking_sleep", json!({"secs": 0.2}))
        .await?;
    println!(
        "call blocking_sleep(secs=0.2) -> {done} (a std::thread::sleep on one of {} blocking pool threads)",
        pool.size()
    );

    match client
        .prepare()
        .version(tidings::Version::new(2, 0))
        .call::<Value>(&ctx, "echo", json!({"x": 1}))
        .await
    {
        Err(error) => println!("call echo at version 2.0 -> {error}"),
        Ok(value) => return Err(format!("version 2.0 was served: {value}").into()),
    }
    match client.call::<Value>(&ctx, "nope", json!({})).await {
        Err(error) => println!("call nope() -> {error}"),
        Ok(value) => return Err(format!("unknown method was served: {value}").into()),
    }

    client.cast(&ctx, "echo", json!({"x": "cast"})).await?;
    println!("cast echo(x=\"cast\") -> sent, no reply expected");

    let report = server.stop(Duration::from_secs(5)).await;
    println!(
        "server stopped: {} requests finished during drain, {} abandoned",
        report.finished, report.abandoned
    );
    transport.close().await;
    Ok(())
}
