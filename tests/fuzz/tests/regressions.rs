//! Inputs that made the library panic, fed through the same paths as the fuzzer: every decode
//! function directly, then a fresh rig (server, listener, reply queue, collector) end to end,
//! which must stay alive. Each test names the panic it guards against and where it was.
//!
//! The panic hook is process-wide, so the tests take turns.

use std::sync::Mutex;
use std::time::Duration;

use tidings::codec::{JSON_CONTENT_TYPE, MSGPACK_CONTENT_TYPE};
use tidings_fuzz::decode::{decode_all, DecodeStats};
use tidings_fuzz::generate::Kind;
use tidings_fuzz::value::Gv;
use tidings_fuzz::{replay, FuzzInput, PanicWatch};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// An input aimed (by its index) at the server's topic queue.
fn input(body: Vec<u8>, content_type: &'static str) -> FuzzInput {
    FuzzInput {
        index: 2,
        kind: Kind::Request,
        body,
        content_type,
    }
}

/// A call to `echo` in the 2.0 envelope with `_timeout` written as `timeout` (raw JSON text).
fn call_with_timeout(timeout: &str) -> Vec<u8> {
    let inner = format!(
        r#"{{"method": "echo", "args": {{}}, "version": "1.2", "_msg_id": "433c55c40f074a0386cc7eec0b5be2df", "_reply_q": "reply_27aa562be58e414fa2b982f85df46fdd", "_timeout": {timeout}, "_unique_id": "bbdbe96b0bdc44ccb88521e41343e40f"}}"#
    );
    let envelope = serde_json::json!({"oslo.version": "2.0", "oslo.message": inner});
    envelope.to_string().into_bytes()
}

/// Feeds `inputs` through both paths; fails on any panic or a dead rig.
fn assert_survives(inputs: Vec<FuzzInput>) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for input in &inputs {
        let panics = decode_all(&input.body, input.content_type, &mut DecodeStats::default());
        assert!(panics.is_empty(), "direct decode panicked: {panics:?}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => panic!("no runtime: {error}"),
    };
    let watch = PanicWatch::install();
    let replayed = runtime.block_on(replay(
        &watch,
        &inputs,
        "regression",
        Duration::from_secs(20),
    ));
    drop(watch);
    let replayed = match replayed {
        Ok(replayed) => replayed,
        Err(error) => panic!("the rig did not run: {error}"),
    };
    assert!(
        replayed.panics.is_empty(),
        "dispatch panicked: {:?}",
        replayed.panics
    );
    if let Err(failure) = replayed.liveness {
        panic!("{failure}");
    }
}

/// `_timeout: 1e20` panicked in `keepalive_interval` (messaging/src/rpc/server.rs):
/// `Duration::from_secs_f64(5e19)` overflows.
#[test]
fn regression_timeout_1e20_does_not_panic_the_server() {
    assert_survives(vec![input(call_with_timeout("1e20"), JSON_CONTENT_TYPE)]);
}

/// The same rule at every edge of `_timeout`: past `u64` seconds, `2^64`, huge exponents
/// (read as infinity), negative, just below the overflow, and a float past `u32`.
#[test]
fn regression_extreme_timeouts_do_not_panic_the_server() {
    let timeouts = [
        "1.8e19",
        "18446744073709551616",
        "1e400",
        "-1e400",
        "-1",
        "1.7976931348623157e308",
        "4294967296.5",
        "-0.0",
        "1e-400",
        "123456789012345678901234567890",
    ];
    assert_survives(
        timeouts
            .iter()
            .map(|t| input(call_with_timeout(t), JSON_CONTENT_TYPE))
            .collect(),
    );
}

/// The same values in MessagePack, where they arrive as floats and integers natively.
#[test]
fn regression_extreme_msgpack_timeouts_do_not_panic_the_server() {
    let timeouts = [
        Gv::Float(1e20),
        Gv::Float(f64::MAX),
        Gv::Float(f64::INFINITY),
        Gv::Float(f64::NAN),
        Gv::UInt(u64::MAX),
        Gv::Int(i64::MIN),
    ];
    let inputs = timeouts
        .into_iter()
        .map(|timeout| {
            let inner = Gv::object([
                ("method", Gv::str("echo")),
                ("args", Gv::Map(Vec::new())),
                ("_msg_id", Gv::str("433c55c40f074a0386cc7eec0b5be2df")),
                (
                    "_reply_q",
                    Gv::str("reply_27aa562be58e414fa2b982f85df46fdd"),
                ),
                ("_timeout", timeout),
                ("_unique_id", Gv::str("bbdbe96b0bdc44ccb88521e41343e40f")),
            ]);
            let body = Gv::object([("oslo.version", Gv::str("2.0")), ("oslo.message", inner)]);
            input(body.to_msgpack(), MSGPACK_CONTENT_TYPE)
        })
        .collect();
    assert_survives(inputs);
}

/// Oversized routing fields: a 300-byte `_reply_q` (past an AMQP short string) and a 64 KiB
/// method name.
#[test]
fn regression_oversized_reply_queue_and_method_do_not_panic_the_server() {
    let long_queue = format!(
        r#"{{"oslo.version": "2.0", "oslo.message": "{{\"method\": \"echo\", \"args\": {{}}, \"_msg_id\": \"m\", \"_reply_q\": \"{}\", \"_timeout\": null, \"_unique_id\": \"u1\"}}"}}"#,
        "q".repeat(300)
    );
    let long_method = format!(
        r#"{{"oslo.version": "2.0", "oslo.message": "{{\"method\": \"{}\", \"args\": {{}}, \"_msg_id\": \"m\", \"_reply_q\": \"reply_x\", \"_timeout\": 10, \"_unique_id\": \"u2\"}}"}}"#,
        "m".repeat(65_536)
    );
    assert_survives(vec![
        input(long_queue.into_bytes(), JSON_CONTENT_TYPE),
        input(long_method.into_bytes(), JSON_CONTENT_TYPE),
    ]);
}
