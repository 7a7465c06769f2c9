//! The blocking pool's gauge `tidings_blocking_pool_busy_threads`, as a scraper reads it: up by
//! one for each job running, and back down when they end.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Barrier};
use std::time::Duration;

use tidings_compat::BlockingPool;

fn busy_threads() -> f64 {
    let handle = tidings_runtime::admin::prometheus().unwrap();
    handle
        .render()
        .lines()
        .find_map(|line| line.strip_prefix("tidings_blocking_pool_busy_threads "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_busy_threads_gauge_counts_the_jobs_running() {
    tidings_runtime::admin::prometheus().unwrap();
    let pool = BlockingPool::new(4).unwrap();
    let started = Arc::new(Barrier::new(3));
    let release = Arc::new(Barrier::new(3));
    let jobs: Vec<_> = (0..2)
        .map(|_| {
            let (started, release) = (started.clone(), release.clone());
            tokio::spawn(pool.run(move || {
                started.wait();
                release.wait();
            }))
        })
        .collect();
    let waiting = started.clone();
    tokio::task::spawn_blocking(move || waiting.wait())
        .await
        .unwrap();
    assert_eq!(busy_threads(), 2.0, "two jobs hold a thread each");
    let releasing = release.clone();
    tokio::task::spawn_blocking(move || releasing.wait())
        .await
        .unwrap();
    for job in jobs {
        job.await.unwrap().unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while busy_threads() != 0.0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(busy_threads(), 0.0, "and give it back when done");
}
