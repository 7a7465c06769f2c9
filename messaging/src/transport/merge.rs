//! A merge of streams polled by wake-up, for the consumer task's queues and a listener's
//! inboxes.
//!
//! `futures`' `SelectAll` does the same job at two costs per item, both paid on every
//! delivery: it allocates a task node for the stream each time it yields, and when it polls a
//! stream that has nothing yet after polling all of them, it wakes its own task "to avoid
//! starving others". Under tokio that self-wake reschedules the task and wakes a parked worker
//! thread (a write to its eventfd), which then finds nothing to do: a system call and a thread
//! switch per delivery. Here each stream has a waker of its own, made once, that marks it woken
//! and wakes the merge's task; a poll looks only at marked streams, and returns `Pending`
//! without waking anyone.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures::stream::Stream;
use futures::task::AtomicWaker;

/// Streams merged into one; ended streams leave it. Yields `None` only when empty (a merge
/// that may be added to later is polled only while it is not empty).
pub(crate) struct Merge<S> {
    members: Vec<Member<S>>,
    /// The merge's own task, woken by any member's waker.
    parent: Arc<AtomicWaker>,
    /// Where the next poll starts looking, so that a busy stream does not starve the others.
    next: usize,
}

struct Member<S> {
    stream: S,
    wake: Arc<MemberWake>,
    waker: Waker,
}

/// A member's waker: marks it woken, then wakes the merge's task.
struct MemberWake {
    woken: AtomicBool,
    parent: Arc<AtomicWaker>,
}

impl Wake for MemberWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.parent.wake();
    }
}

impl<S> Default for Merge<S> {
    fn default() -> Self {
        Self {
            members: Vec::new(),
            parent: Arc::default(),
            next: 0,
        }
    }
}

impl<S> Merge<S> {
    /// Adds `stream`; it is polled at the next poll (its owner's, who holds the merge: no
    /// wake is needed).
    pub(crate) fn push(&mut self, stream: S) {
        let wake = Arc::new(MemberWake {
            woken: AtomicBool::new(true),
            parent: self.parent.clone(),
        });
        let waker = Waker::from(wake.clone());
        self.members.push(Member {
            stream,
            wake,
            waker,
        });
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

impl<S> FromIterator<S> for Merge<S> {
    fn from_iter<I: IntoIterator<Item = S>>(streams: I) -> Self {
        let mut merge = Merge::default();
        for stream in streams {
            merge.push(stream);
        }
        merge
    }
}

impl<S: Stream + Unpin> Stream for Merge<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = &mut *self;
        // Registered before the marks are read, so a wake after a read is never lost.
        this.parent.register(cx.waker());
        // Each member is looked at once, from where the last item came from onwards.
        let mut index = this.next;
        let mut unvisited = this.members.len();
        while unvisited > 0 {
            if index >= this.members.len() {
                index = 0;
            }
            unvisited -= 1;
            let member = &mut this.members[index];
            if member.wake.woken.swap(false, Ordering::Acquire) {
                let mut member_cx = Context::from_waker(&member.waker);
                match Pin::new(&mut member.stream).poll_next(&mut member_cx) {
                    Poll::Ready(Some(item)) => {
                        // It may hold more: look again at the next poll, after the others.
                        member.wake.woken.store(true, Ordering::Release);
                        this.next = index + 1;
                        return Poll::Ready(Some(item));
                    }
                    Poll::Ready(None) => {
                        // Order kept: the members after it move down, `index` is the next.
                        this.members.remove(index);
                        continue;
                    }
                    Poll::Pending => {}
                }
            }
            index += 1;
        }
        if this.members.is_empty() {
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use futures::StreamExt;
    use tokio::sync::mpsc;

    use super::*;

    /// An mpsc receiver as a stream (the shape of a listener's inbox).
    struct Receiver(mpsc::Receiver<u32>);

    impl Stream for Receiver {
        type Item = u32;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<u32>> {
            self.0.poll_recv(cx)
        }
    }

    /// Counts the wakes of the task polling the merge.
    struct CountingWake(AtomicUsize);

    impl Wake for CountingWake {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_poll_that_finds_nothing_does_not_wake_its_own_task() {
        let (sender, receiver) = mpsc::channel(8);
        let mut merge: Merge<Receiver> = [Receiver(receiver)].into_iter().collect();
        let wakes = Arc::new(CountingWake(AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        assert_eq!(merge.poll_next_unpin(&mut cx), Poll::Pending);
        sender.try_send(7).unwrap();
        assert_eq!(
            wakes.0.load(Ordering::Relaxed),
            1,
            "a send wakes the merge's task"
        );
        assert_eq!(merge.poll_next_unpin(&mut cx), Poll::Ready(Some(7)));
        assert_eq!(merge.poll_next_unpin(&mut cx), Poll::Pending);
        assert_eq!(
            wakes.0.load(Ordering::Relaxed),
            1,
            "finding the stream empty again wakes nobody (SelectAll woke itself here)"
        );
    }

    #[tokio::test]
    async fn every_item_of_every_stream_comes_out_and_the_merge_ends_with_its_streams() {
        let mut senders = Vec::new();
        let mut merge = Merge::default();
        for _ in 0..3 {
            let (sender, receiver) = mpsc::channel(64);
            senders.push(sender);
            merge.push(Receiver(receiver));
        }
        let producers: Vec<_> = senders
            .into_iter()
            .enumerate()
            .map(|(s, sender)| {
                tokio::spawn(async move {
                    for i in 0..100u32 {
                        sender.send(s as u32 * 1000 + i).await.unwrap();
                    }
                })
            })
            .collect();
        let mut seen: Vec<u32> = Vec::new();
        while let Some(item) = merge.next().await {
            seen.push(item);
        }
        for producer in producers {
            producer.await.unwrap();
        }
        assert!(merge.is_empty());
        // Each stream's items in its own order, all of them.
        for s in 0..3u32 {
            let mine: Vec<u32> = seen.iter().copied().filter(|v| v / 1000 == s).collect();
            let expected: Vec<u32> = (0..100).map(|i| s * 1000 + i).collect();
            assert_eq!(mine, expected);
        }
    }

    #[test]
    fn a_busy_stream_does_not_starve_the_others() {
        let (busy, busy_receiver) = mpsc::channel(64);
        let (quiet, quiet_receiver) = mpsc::channel(64);
        let mut merge: Merge<Receiver> = [Receiver(busy_receiver), Receiver(quiet_receiver)]
            .into_iter()
            .collect();
        for i in 0..10 {
            busy.try_send(i).unwrap();
        }
        quiet.try_send(100).unwrap();
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let first_two: Vec<_> = (0..2).map(|_| merge.poll_next_unpin(&mut cx)).collect();
        assert!(
            first_two.contains(&Poll::Ready(Some(100))),
            "the quiet stream's item comes within the first two: {first_two:?}"
        );
    }

    #[test]
    fn a_stream_added_later_is_polled_and_an_ended_one_leaves() {
        let (first, first_receiver) = mpsc::channel(8);
        let mut merge: Merge<Receiver> = [Receiver(first_receiver)].into_iter().collect();
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(merge.poll_next_unpin(&mut cx), Poll::Pending);
        let (second, second_receiver) = mpsc::channel(8);
        second.try_send(2).unwrap();
        merge.push(Receiver(second_receiver));
        assert_eq!(merge.poll_next_unpin(&mut cx), Poll::Ready(Some(2)));
        drop(first);
        assert_eq!(merge.poll_next_unpin(&mut cx), Poll::Pending);
        assert_eq!(merge.members.len(), 1, "the ended stream left");
        drop(second);
        assert_eq!(merge.poll_next_unpin(&mut cx), Poll::Ready(None));
        assert!(merge.is_empty());
    }
}
