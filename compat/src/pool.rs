//! The blocking pool: a fixed set of OS threads that run blocking handlers, away from the async
//! workers.
//!
//! This module owns the threads, the job queue and the permits that bound them. It knows nothing
//! of RPC or notifications: [`crate::endpoint`] and [`crate::notify`] adapt handlers onto
//! [`BlockingPool::run`].
//!
//! # Why a pool of its own
//!
//! A blocking handler (file I/O, a database driver without async, `std::thread::sleep`) run on a
//! Tokio worker stalls every task scheduled there: other handlers, the reply router, AMQP
//! heartbeats. `tokio::task::spawn_blocking` moves it off the workers but onto a pool shared with
//! the whole process and sized for bursts (512 threads by default), so it neither bounds the
//! handlers nor pushes back on the broker. A [`BlockingPool`] is what oslo.messaging's threading
//! executor is: exactly `size` threads (`executor_thread_pool_size`, 64 by default), started up
//! front and kept for the life of the pool.
//!
//! # Bounds and backpressure
//!
//! Work enters the pool only with a permit from a semaphore of `size` permits. The permit is
//! taken *before* the job is queued and released by the pool thread when the job has finished,
//! so at most `size` jobs exist at any time — queued or running — and the queue never grows
//! beyond the threads. A caller that finds no permit waits (asynchronously) for one; in an RPC
//! server that wait holds the server's dispatch slot, which is what makes the server stop taking
//! messages from the broker when the pool is full (see [`crate::endpoint`]).

use std::fmt;
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

/// oslo.messaging's `executor_thread_pool_size`: the default number of threads.
pub const DEFAULT_POOL_SIZE: usize = 64;

/// Prefix of the pool threads' names (`tidings-blocking-0`, `tidings-blocking-1`, …).
pub const DEFAULT_THREAD_NAME: &str = "tidings-blocking";

/// What can go wrong starting or using a [`BlockingPool`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The operating system refused to start a pool thread.
    #[error("could not start blocking pool thread {name}: {source}")]
    Spawn {
        /// Name of the thread that failed to start.
        name: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The job panicked; the pool thread caught it and lives on.
    #[error("blocking job panicked: {detail}")]
    Panicked {
        /// The panic message (or a note that it was not a string).
        detail: String,
    },
    /// The pool's threads are gone, so the job could not run. Pool threads catch panics and only
    /// end when every handle to the pool is dropped, so this is not expected in a live pool.
    #[error("the blocking pool has shut down")]
    Closed,
}

/// Builds a [`BlockingPool`] with a size and thread names other than the defaults.
#[derive(Clone, Debug)]
pub struct BlockingPoolBuilder {
    size: usize,
    thread_name: String,
}

impl BlockingPoolBuilder {
    /// Number of threads, hence of blocking jobs running at once (default 64; at least 1).
    #[must_use]
    pub fn size(mut self, size: usize) -> Self {
        self.size = size.max(1);
        self
    }

    /// Prefix of the threads' names, shown by debuggers, `top -H` and panic messages.
    #[must_use]
    pub fn thread_name(mut self, prefix: impl Into<String>) -> Self {
        self.thread_name = prefix.into();
        self
    }

    /// Starts the threads. When one cannot start, those already started end and the error says
    /// which one failed.
    pub fn build(self) -> Result<BlockingPool, PoolError> {
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for index in 0..self.size {
            let name = format!("{}-{index}", self.thread_name);
            let jobs = receiver.clone();
            std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || work(&jobs))
                .map_err(|source| PoolError::Spawn { name, source })?;
        }
        Ok(BlockingPool {
            inner: Arc::new(Inner {
                jobs: sender,
                permits: Arc::new(Semaphore::new(self.size)),
                size: self.size,
                thread_name: self.thread_name,
            }),
        })
    }
}

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A fixed pool of OS threads for blocking handlers. Cheap to clone: clones share the threads.
///
/// The threads end once every clone is dropped and the jobs already queued have run; nothing
/// joins them, so dropping a pool never blocks (not even inside an async task).
///
/// ```
/// use tidings_compat::BlockingPool;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tidings_compat::PoolError> {
/// let pool = BlockingPool::new(4)?;
/// let name = pool.run(|| std::thread::current().name().map(str::to_owned)).await?;
/// assert!(name.is_some_and(|name| name.starts_with("tidings-blocking-")));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct BlockingPool {
    inner: Arc<Inner>,
}

struct Inner {
    /// Feeds the threads. At most `size` jobs are ever in it or running (the permits).
    jobs: mpsc::Sender<Job>,
    permits: Arc<Semaphore>,
    size: usize,
    thread_name: String,
}

impl fmt::Debug for BlockingPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockingPool")
            .field("size", &self.inner.size)
            .field("in_use", &self.in_use())
            .field("thread_name", &self.inner.thread_name)
            .finish()
    }
}

impl BlockingPool {
    /// A pool of `size` threads (at least 1), named `tidings-blocking-N`.
    pub fn new(size: usize) -> Result<Self, PoolError> {
        Self::builder().size(size).build()
    }

    /// Starts building a pool: 64 threads (oslo's default) unless told otherwise.
    pub fn builder() -> BlockingPoolBuilder {
        BlockingPoolBuilder {
            size: DEFAULT_POOL_SIZE,
            thread_name: DEFAULT_THREAD_NAME.to_owned(),
        }
    }

    /// Number of threads: the most blocking jobs that run at once.
    pub fn size(&self) -> usize {
        self.inner.size
    }

    /// Jobs admitted and not finished yet (queued for a thread or running), for metrics.
    pub fn in_use(&self) -> usize {
        self.inner.size - self.inner.permits.available_permits()
    }

    /// The semaphore that admits jobs; [`crate::BlockingMethod`] polls it in `poll_ready`.
    pub(crate) fn permits(&self) -> Arc<Semaphore> {
        self.inner.permits.clone()
    }

    /// Waits for a free thread's permit.
    pub(crate) async fn acquire(&self) -> Result<OwnedSemaphorePermit, PoolError> {
        // The semaphore is never closed while a handle to the pool exists; treat it as closed
        // all the same rather than trust that.
        self.inner
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| PoolError::Closed)
    }

    /// Runs `job` on a pool thread once one is free, and returns its result. A panic in `job`
    /// becomes [`PoolError::Panicked`]; the thread survives it.
    ///
    /// This is also the porting aid for async code that still has to call a blocking library:
    /// `pool.run(move || legacy::lookup(&key)).await` keeps the call off the async workers and
    /// within the pool's bound.
    ///
    /// The current `tracing` span is entered on the pool thread while `job` runs, so its events
    /// belong to the request that caused them.
    ///
    /// # Cancellation
    ///
    /// Dropping the future before a permit is granted queues nothing. Once `job` is queued it
    /// runs to the end even when the future is dropped (a thread cannot be interrupted), and it
    /// keeps its permit until then, so the pool's bound holds even for abandoned work.
    pub fn run<F, R>(&self, job: F) -> impl Future<Output = Result<R, PoolError>> + Send + 'static
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        // Owns a handle to the pool, so the future can be spawned or stored.
        let pool = self.clone();
        async move {
            let permit = pool.acquire().await?;
            pool.run_with(permit, job).await
        }
    }

    /// Queues `job` under an already granted `permit` and waits for its result.
    pub(crate) async fn run_with<F, R>(
        &self,
        permit: OwnedSemaphorePermit,
        job: F,
    ) -> Result<R, PoolError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let (done, result) = oneshot::channel();
        let span = tracing::Span::current();
        let task: Job = Box::new(move || {
            let busy = ::metrics::gauge!(BUSY_THREADS);
            busy.increment(1.0);
            let outcome = {
                let _entered = span.enter();
                panic::catch_unwind(AssertUnwindSafe(job)).map_err(|payload| PoolError::Panicked {
                    detail: panic_detail(payload.as_ref()),
                })
            };
            busy.decrement(1.0);
            // The caller may have given up; its result is then of no use to anyone.
            let _ = done.send(outcome);
            // Released only now: the job counted against the bound until it was done.
            drop(permit);
        });
        self.inner.jobs.send(task).map_err(|_| PoolError::Closed)?;
        result.await.map_err(|_| PoolError::Closed)?
    }
}

/// The threads of every blocking pool of the process running a job now (a Prometheus gauge,
/// through the `metrics` facade; see `tidings::metrics`).
pub const BUSY_THREADS: &str = "tidings_blocking_pool_busy_threads";

/// A pool thread: takes jobs until every sender is gone.
fn work(jobs: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        // One idle thread waits in `recv` while holding the lock; the others wait for the lock.
        // A job never runs under the lock, so a poisoned lock only means a panic between the
        // two lines below, and the receiver inside is still sound.
        let next = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(job) = next else { return };
        // The job catches its handler's panics; this catches the rest (a panicking drop of a
        // panic payload), so the thread always survives.
        let _ = panic::catch_unwind(AssertUnwindSafe(job));
    }
}

/// The message of a panic, as the dispatcher reports async ones.
pub(crate) fn panic_detail(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn never_runs_more_jobs_than_threads() {
        let pool = BlockingPool::new(3).unwrap();
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let jobs = (0..30).map(|_| {
            let (pool, running, peak) = (pool.clone(), running.clone(), peak.clone());
            tokio::spawn(async move {
                pool.run(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(5));
                    running.fetch_sub(1, Ordering::SeqCst);
                })
                .await
            })
        });
        for job in futures::future::join_all(jobs).await {
            job.unwrap().unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 3);
        // A pool thread gives its permit back just after it has sent the result: the last one
        // may still be on its way.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while pool.in_use() != 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(pool.in_use(), 0);
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_and_the_thread_lives_on() {
        let pool = BlockingPool::new(1).unwrap();
        let before = pool.run(|| std::thread::current().id()).await.unwrap();
        let error = pool
            .run(|| -> u8 { panic!("boom in a job") })
            .await
            .unwrap_err();
        assert!(
            matches!(&error, PoolError::Panicked { detail } if detail == "boom in a job"),
            "{error}"
        );
        let after = pool.run(|| std::thread::current().id()).await.unwrap();
        assert_eq!(before, after, "the same thread serves after the panic");
    }

    #[tokio::test]
    async fn an_abandoned_job_keeps_its_permit_until_it_ends() {
        let pool = BlockingPool::new(1).unwrap();
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = oneshot::channel();
        let job = pool.run(move || {
            let _ = started_tx.send(());
            let _ = gate.recv();
        });
        let waiting = tokio::spawn(job);
        started.await.unwrap();
        waiting.abort();
        let _ = waiting.await;
        assert_eq!(pool.in_use(), 1, "the job still runs and holds the thread");
        release.send(()).unwrap();
        pool.run(|| ()).await.unwrap();
        // The pool thread gives the permit back just after it has sent the result, so the
        // caller may see it a moment later.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while pool.in_use() != 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(pool.in_use(), 0);
    }
}
