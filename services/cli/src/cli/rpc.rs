//! `tidings call` and `tidings cast`: RPC from the shell, for operators and scripts.
//!
//! Exit codes are a contract: 0 success, 1 remote error (class, module and message on stderr),
//! 2 timeout, 3 any other failure (bad input, no broker).

use std::process::ExitCode;
use std::time::Duration;

use super::exit;
use serde_json::{Map, Value};
use tidings::rpc::{RpcClient, RpcError};
use tidings::{Context, Target, Transport, Version};

/// Where and how to send (shared by `call` and `cast`).
#[derive(Debug, clap::Args)]
pub struct RpcArgs {
    /// Transport URL (rabbit://user:pass@host:5672/vhost, memory://NAME).
    #[arg(long, visible_alias = "transport-url", env = "TIDINGS_TRANSPORT_URL")]
    url: String,
    /// Topic of the servers.
    #[arg(long)]
    topic: String,
    /// Exchange (default: the control exchange, `openstack`).
    #[arg(long)]
    exchange: Option<String>,
    /// Send to one server (TOPIC.SERVER).
    #[arg(long)]
    server: Option<String>,
    /// Namespace of the method.
    #[arg(long)]
    namespace: Option<String>,
    /// API version requested, X.Y.
    #[arg(long)]
    version: Option<Version>,
    /// Seconds to wait for a reply (calls) or for the broker (casts).
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// Request context as a JSON object.
    #[arg(long)]
    context: Option<String>,
    /// Method name.
    method: String,
    /// Keyword arguments as a JSON object.
    #[arg(default_value = "{}")]
    args: String,
}

/// Arguments of `tidings cast`.
#[derive(Debug, clap::Args)]
pub struct CastArgs {
    #[command(flatten)]
    rpc: RpcArgs,
    /// Deliver to every server on the topic.
    #[arg(long)]
    fanout: bool,
}

/// What the command line asked for, checked.
struct Request {
    client: RpcClient,
    context: Context,
    method: String,
    args: Map<String, Value>,
    transport: Transport,
}

async fn prepare(args: RpcArgs) -> Result<Request, String> {
    let timeout = Duration::try_from_secs_f64(args.timeout).map_err(|_| {
        format!(
            "--timeout must be a non-negative number of seconds, got {}",
            args.timeout
        )
    })?;
    let context = match &args.context {
        None => Context::new(),
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => Context::from(map),
            Ok(_) => return Err("--context must be a JSON object".to_owned()),
            Err(error) => return Err(format!("--context is not valid JSON: {error}")),
        },
    };
    let call_args = match serde_json::from_str::<Value>(&args.args) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err("ARGS_JSON must be a JSON object of keyword arguments".to_owned()),
        Err(error) => return Err(format!("ARGS_JSON is not valid JSON: {error}")),
    };
    let transport = Transport::connect(&args.url)
        .await
        .map_err(|error| format!("cannot open the transport: {error}"))?;
    let mut target = Target::topic(&args.topic);
    target.exchange = args.exchange;
    target.server = args.server;
    target.namespace = args.namespace;
    target.version = args.version;
    Ok(Request {
        client: RpcClient::new(&transport, target).timeout(timeout),
        context,
        method: args.method,
        args: call_args,
        transport,
    })
}

/// `tidings call`: prints the JSON result on stdout.
pub async fn run_call(args: RpcArgs) -> ExitCode {
    let request = match prepare(args).await {
        Ok(request) => request,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(exit::CANNOT_RUN);
        }
    };
    let outcome = request
        .client
        .call::<Value>(&request.context, &request.method, &request.args)
        .await;
    request.transport.close().await;
    match outcome {
        Ok(result) => {
            println!("{result}");
            ExitCode::SUCCESS
        }
        Err(error) => report(&error),
    }
}

/// `tidings cast`: returns once the broker has taken the message.
pub async fn run_cast(args: CastArgs) -> ExitCode {
    let request = match prepare(args.rpc).await {
        Ok(request) => request,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(exit::CANNOT_RUN);
        }
    };
    let outcome = request
        .client
        .fanout(args.fanout)
        .cast(&request.context, &request.method, &request.args)
        .await;
    request.transport.close().await;
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => report(&error),
    }
}

fn report(error: &RpcError) -> ExitCode {
    if let Some(remote) = error.remote() {
        eprintln!(
            "remote error: class={} module={} message={}",
            remote.class, remote.module, remote.message
        );
        return ExitCode::from(exit::FAILED);
    }
    eprintln!("error: {error}");
    if error.is_timeout() {
        ExitCode::from(exit::TIMEOUT)
    } else {
        ExitCode::from(exit::CANNOT_RUN)
    }
}
