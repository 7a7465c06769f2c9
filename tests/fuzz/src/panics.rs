//! Counting panics in every thread. Dispatch runs in tokio tasks whose panics the library's
//! `JoinSet`s swallow, so a panic hook is the only place all of them can be seen. The hook is
//! process-wide: [`PanicWatch::install`] puts ours in place, quiet (a run may see thousands),
//! and dropping the watch puts the previous hook back.

use std::panic::{self, PanicHookInfo};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Where a panic happened and what it said.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PanicSite {
    /// `file:line:column`, or `unknown`.
    pub location: String,
    /// The panic message.
    pub message: String,
}

impl std::fmt::Display for PanicSite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// Keeps at most this many panic records; the count goes on.
const MAX_RECORDS: usize = 10_000;

#[derive(Debug, Default)]
struct Seen {
    count: AtomicU64,
    direct: AtomicU64,
    /// Each panic's site, and whether it happened inside [`in_direct_decode`].
    records: Mutex<Vec<(PanicSite, bool)>>,
}

thread_local! {
    static DIRECT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` (which calls the codec directly, under `catch_unwind`) marked so that its panics
/// are told apart from those of dispatch tasks.
pub fn in_direct_decode<R>(f: impl FnOnce() -> R) -> R {
    DIRECT.with(|d| d.set(true));
    let out = f();
    DIRECT.with(|d| d.set(false));
    out
}

/// The installed hook's record of panics; dropping it restores the previous hook.
#[derive(Debug)]
pub struct PanicWatch {
    seen: Arc<Seen>,
    installed: bool,
}

type Hook = Box<dyn Fn(&PanicHookInfo<'_>) + Sync + Send + 'static>;

/// The hook in place before ours, put back on drop.
static PREVIOUS: Mutex<Option<Hook>> = Mutex::new(None);

impl PanicWatch {
    /// Installs the counting hook for the whole process.
    pub fn install() -> PanicWatch {
        let seen = Arc::new(Seen::default());
        let counting = seen.clone();
        let previous = panic::take_hook();
        *PREVIOUS.lock().unwrap_or_else(|e| e.into_inner()) = Some(previous);
        panic::set_hook(Box::new(move |info| {
            counting.count.fetch_add(1, Ordering::SeqCst);
            let site = site_of(info);
            let direct = DIRECT.with(std::cell::Cell::get);
            if direct {
                counting.direct.fetch_add(1, Ordering::SeqCst);
            }
            let mut records = counting.records.lock().unwrap_or_else(|e| e.into_inner());
            if records.len() < MAX_RECORDS {
                records.push((site, direct));
            }
        }));
        PanicWatch {
            seen,
            installed: true,
        }
    }

    /// Panics seen so far, in any thread.
    pub fn count(&self) -> u64 {
        self.seen.count.load(Ordering::SeqCst)
    }

    /// Panics seen outside direct decoding: in dispatch tasks and other threads.
    pub fn dispatch_count(&self) -> u64 {
        self.count()
            .saturating_sub(self.seen.direct.load(Ordering::SeqCst))
    }

    /// The panics recorded from the `from`th on, outside direct decoding (in dispatch tasks
    /// and other threads).
    pub fn dispatch_sites_since(&self, from: u64) -> Vec<PanicSite> {
        let records = self.seen.records.lock().unwrap_or_else(|e| e.into_inner());
        let from = usize::try_from(from).unwrap_or(usize::MAX);
        records
            .get(from..)
            .unwrap_or_default()
            .iter()
            .filter(|(_, direct)| !direct)
            .map(|(site, _)| site.clone())
            .collect()
    }

    /// The last panic recorded (for a direct decode's `catch_unwind`, its own).
    pub fn last_site(&self) -> Option<PanicSite> {
        let records = self.seen.records.lock().unwrap_or_else(|e| e.into_inner());
        records.last().map(|(site, _)| site.clone())
    }
}

impl Drop for PanicWatch {
    fn drop(&mut self) {
        if self.installed {
            let previous = PREVIOUS.lock().unwrap_or_else(|e| e.into_inner()).take();
            match previous {
                Some(hook) => panic::set_hook(hook),
                None => drop(panic::take_hook()),
            }
        }
    }
}

fn site_of(info: &PanicHookInfo<'_>) -> PanicSite {
    let location = info.location().map_or_else(
        || "unknown".to_owned(),
        |l| format!("{}:{}:{}", l.file(), l.line(), l.column()),
    );
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-text panic payload)".to_owned());
    PanicSite { location, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_in_another_thread_is_counted_with_its_site() {
        let watch = PanicWatch::install();
        let before = watch.dispatch_count();
        let joined = std::thread::spawn(|| panic!("deliberate")).join();
        assert!(joined.is_err());
        assert_eq!(watch.dispatch_count(), before + 1);
        let sites = watch.dispatch_sites_since(0);
        assert!(sites.iter().any(|s| s.message == "deliberate"), "{sites:?}");
        let caught = in_direct_decode(|| std::panic::catch_unwind(|| panic!("direct")));
        assert!(caught.is_err());
        assert_eq!(
            watch.dispatch_count(),
            before + 1,
            "direct panics counted apart"
        );
        assert_eq!(watch.count(), before + 2);
    }
}
