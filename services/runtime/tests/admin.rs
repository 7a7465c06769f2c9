//! The admin listener: `/health` follows the engine's manifolds and what their workers report,
//! `/metrics` is Prometheus text with each manifold's `tidings_engine_manifold_up`, and an
//! address beyond loopback needs the operator's say-so.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tidings_runtime::admin::{AdminError, AdminServer, Exposure};
use tidings_runtime::{Engine, EngineConfig, Manifold, TaskWorker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GETs `path` over plain HTTP/1.0: the status and the body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A manifold whose worker reports a problem while `down` is set.
fn database(down: Arc<AtomicBool>) -> Manifold {
    Manifold::new(move |_, _| {
        let down = down.clone();
        async move {
            Ok(TaskWorker::spawn(|stop| async move {
                stop.cancelled().await;
                Ok(())
            })
            .with_health(move || {
                if down.load(Ordering::SeqCst) {
                    Err("database down: connection refused".to_owned())
                } else {
                    Ok(())
                }
            }))
        }
    })
}

#[tokio::test]
async fn health_is_503_naming_the_unhealthy_manifold_and_200_once_it_recovers() {
    let engine = Engine::new(EngineConfig::default()).unwrap();
    let down = Arc::new(AtomicBool::new(false));
    engine.install("store", database(down.clone())).unwrap();
    let admin = AdminServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        Exposure::LoopbackOnly,
        Some(engine.clone()),
    )
    .await
    .unwrap();
    let addr = admin.local_addr();
    let mut healthy = false;
    for _ in 0..100 {
        if get(addr, "/health").await.0 == 200 {
            healthy = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(healthy, "the manifold starts and /health says so");

    down.store(true, Ordering::SeqCst);
    let (status, body) = get(addr, "/health").await;
    assert_eq!(status, 503);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["status"], "unhealthy");
    assert_eq!(body["manifolds"]["store"]["state"], "started");
    assert_eq!(
        body["manifolds"]["store"]["problem"],
        "database down: connection refused"
    );
    let (_, metrics) = get(addr, "/metrics").await;
    assert!(
        metrics.contains("tidings_engine_manifold_up{manifold=\"store\"} 0"),
        "{metrics}"
    );

    down.store(false, Ordering::SeqCst);
    assert_eq!(get(addr, "/health").await.0, 200);
    let (_, metrics) = get(addr, "/metrics").await;
    assert!(
        metrics.contains("tidings_engine_manifold_up{manifold=\"store\"} 1"),
        "{metrics}"
    );
    admin.shutdown().await;
    engine.kill();
}

#[tokio::test]
async fn a_public_address_needs_the_operators_say_so() {
    let refused = AdminServer::bind("0.0.0.0:0".parse().unwrap(), Exposure::LoopbackOnly, None)
        .await
        .unwrap_err();
    assert!(matches!(refused, AdminError::NotLoopback(_)));
    assert!(refused.to_string().contains("--admin-public"), "{refused}");
    let public = AdminServer::bind("0.0.0.0:0".parse().unwrap(), Exposure::Public, None)
        .await
        .unwrap();
    let port = public.local_addr().port();
    let (status, _) = get(SocketAddr::from(([127, 0, 0, 1], port)), "/health").await;
    assert_eq!(status, 200);
    public.shutdown().await;
}
