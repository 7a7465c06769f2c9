//! Codec micro-benchmarks: encode and decode of an RPC request, a reply and a notification in
//! oslo JSON and MessagePack. `cargo bench -p tidings --bench codec`; see docs/benchmarks.md.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde_json::{json, Map, Value};
use tidings::codec::{CallInfo, Codec, Notification, NotificationFormat, RpcReply, RpcRequest};
use tidings::Context;

/// The payload of `tidings bench`: a small record like those agents exchange.
fn payload() -> Value {
    json!({
        "instance_id": "0b6f1c2e-5a8d-4a43-9e51-3c1f0e4c2b7a",
        "host": "compute-17",
        "flavor": {"vcpus": 2, "ram": 2048, "disk": 20},
        "tags": ["bench", "tidings"],
        "count": 42
    })
}

fn context() -> Context {
    Context::new()
        .with("user_id", "u-bench")
        .with("project_id", "p-bench")
        .with("request_id", "req-5c2e9a4f-0d2b-4f7e-8c1a-6b3d9e0f1a2b")
}

fn request() -> RpcRequest {
    let mut args = Map::new();
    args.insert("payload".into(), payload());
    RpcRequest {
        method: "echo".into(),
        args,
        namespace: None,
        version: Some("1.3".into()),
        call: Some(CallInfo {
            msg_id: "6f0c1f1e8f6a4a7b9d3c2b1a0e9f8d7c".into(),
            reply_q: "reply_0a1b2c3d4e5f60718293a4b5c6d7e8f9".into(),
            timeout: None,
        }),
        unique_id: "a1b2c3d4e5f60718293a4b5c6d7e8f90".into(),
        context: context(),
    }
}

fn reply() -> RpcReply {
    RpcReply {
        result: payload(),
        failure: None,
        ending: true,
        msg_id: "6f0c1f1e8f6a4a7b9d3c2b1a0e9f8d7c".into(),
        unique_id: "b1b2c3d4e5f60718293a4b5c6d7e8f90".into(),
    }
}

fn notification() -> Notification {
    Notification {
        message_id: "1d4c9d1e-7a53-4b0c-8c8e-2f6a5b9e3d21".into(),
        publisher_id: "compute.compute-17".into(),
        event_type: "compute.instance.create.end".into(),
        priority: "INFO".into(),
        payload: payload(),
        timestamp: "2026-11-22 19:28:40.220652".into(),
        unique_id: Some("c1b2c3d4e5f60718293a4b5c6d7e8f90".into()),
        context: context(),
    }
}

const CODECS: [(&str, Codec); 2] = [("json", Codec::OsloJson), ("msgpack", Codec::MessagePack)];

fn codecs(c: &mut Criterion) {
    let (request, reply, notification) = (request(), reply(), notification());
    for (name, codec) in CODECS {
        let body = codec.encode_request(&request).unwrap();
        let mut group = c.benchmark_group("request");
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(BenchmarkId::new("encode", name), |b| {
            b.iter(|| codec.encode_request(black_box(&request)).unwrap())
        });
        group.bench_function(BenchmarkId::new("decode", name), |b| {
            b.iter(|| codec.decode_request(black_box(&body)).unwrap())
        });
        group.finish();

        let body = codec.encode_reply(&reply).unwrap();
        let mut group = c.benchmark_group("reply");
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(BenchmarkId::new("encode", name), |b| {
            b.iter(|| codec.encode_reply(black_box(&reply)).unwrap())
        });
        group.bench_function(BenchmarkId::new("decode", name), |b| {
            b.iter(|| codec.decode_reply(black_box(&body)).unwrap())
        });
        group.finish();

        let body = codec
            .encode_notification(&notification, NotificationFormat::V2)
            .unwrap();
        let mut group = c.benchmark_group("notification");
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(BenchmarkId::new("encode", name), |b| {
            b.iter(|| {
                codec
                    .encode_notification(black_box(&notification), NotificationFormat::V2)
                    .unwrap()
            })
        });
        group.bench_function(BenchmarkId::new("decode", name), |b| {
            b.iter(|| codec.decode_notification(black_box(&body)).unwrap())
        });
        group.finish();
    }
}

criterion_group!(benches, codecs);
criterion_main!(benches);
