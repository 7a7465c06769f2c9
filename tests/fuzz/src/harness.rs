//! The run: generate and mutate messages, send each through the direct decoders and the rig,
//! check liveness after every batch, find which input caused a panic in a dispatch task, save
//! it, and report.
//!
//! A panic in a dispatch task cannot be tied to its input where it happens (the task knows
//! nothing of the run), so a batch whose dispatch panicked is replayed on fresh rigs, halving
//! it until single inputs remain (`triage`); the inputs found are saved like direct panics.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::corpus::Corpus;
use crate::decode::{self, DecodeStats};
use crate::generate::Aim;
use crate::mutate::{self, FuzzInput};
use crate::panics::{PanicSite, PanicWatch};
use crate::rig::{self, LivenessFailure, Rig, RigError, StoreAt};

/// How a run goes.
#[derive(Clone, Debug)]
pub struct FuzzConfig {
    /// Messages to try.
    pub messages: u64,
    /// Seed of the run: message `i` is a function of `(seed, i)`.
    pub seed: u64,
    /// Where panicking inputs are written (made on the first one); a fresh temporary
    /// directory when `None`.
    pub out_dir: Option<PathBuf>,
    /// Messages between liveness checks.
    pub batch: usize,
    /// Longest wait for one liveness check.
    pub liveness_timeout: Duration,
    /// Inputs saved per panic location; later ones are counted only.
    pub max_saved_per_site: usize,
    /// Fresh rigs the whole run may start to find which input made a dispatch task panic.
    pub max_triage_probes: usize,
    /// Print progress to stderr every this many messages.
    pub progress_every: Option<u64>,
}

impl Default for FuzzConfig {
    fn default() -> Self {
        Self {
            messages: 20_000,
            seed: 0,
            out_dir: None,
            batch: 500,
            liveness_timeout: Duration::from_secs(30),
            max_saved_per_site: 3,
            max_triage_probes: 400,
            progress_every: None,
        }
    }
}

/// Why a run could not go on.
#[derive(Debug, thiserror::Error)]
pub enum FuzzError {
    /// The output or scratch directory could not be made or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// A rig could not start, or publishing to it failed.
    #[error(transparent)]
    Rig(#[from] RigError),
}

/// One panicking input written to the output directory.
#[derive(Clone, Debug)]
pub struct SavedPanic {
    /// Seed of the run.
    pub seed: u64,
    /// Index of the message in the run.
    pub index: u64,
    /// The path it panicked on: a decode function, or `end to end`.
    pub path: String,
    /// The panics it caused.
    pub sites: Vec<PanicSite>,
    /// The content type it was published with.
    pub content_type: &'static str,
    /// The file holding its exact bytes.
    pub file: PathBuf,
}

/// What a run found.
#[derive(Clone, Debug)]
pub struct FuzzReport {
    /// Seed of the run.
    pub seed: u64,
    /// Messages tried.
    pub messages: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Panics caught in direct decode or encode calls.
    pub direct_panics: u64,
    /// Panics in dispatch tasks (or any other thread) while the run's rig served.
    pub dispatch_panics: u64,
    /// Panics by `location: message`, both paths.
    pub panic_sites: BTreeMap<String, u64>,
    /// Inputs saved.
    pub saved: Vec<SavedPanic>,
    /// Batches whose dispatch panics no replay reproduced (or triage ran out of probes).
    pub unattributed_batches: u64,
    /// Fresh rigs started for triage.
    pub triage_probes: usize,
    /// Direct decode counts.
    pub decode: DecodeStats,
    /// Liveness checks passed.
    pub liveness_checks: u64,
    /// Liveness checks failed (the run stops at the first).
    pub liveness_failures: Vec<LivenessFailure>,
    /// Undecodable or over-requeued notifications drained from dead-letter queues.
    pub dead_lettered: u64,
    /// Peak resident memory (VmHWM), in KiB.
    pub peak_rss_kib: Option<u64>,
    /// Where panicking inputs were written.
    pub out_dir: PathBuf,
}

impl FuzzReport {
    /// Panics on both paths.
    pub fn panics(&self) -> u64 {
        self.direct_panics + self.dispatch_panics
    }

    /// Messages per second.
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for FuzzReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "seed: {}", self.seed)?;
        writeln!(
            f,
            "messages tried: {} in {:.1?} ({:.0} msg/s)",
            self.messages,
            self.elapsed,
            self.rate()
        )?;
        writeln!(
            f,
            "panics: {} (direct decode/encode: {}, dispatch tasks: {})",
            self.panics(),
            self.direct_panics,
            self.dispatch_panics
        )?;
        for (site, count) in &self.panic_sites {
            writeln!(f, "  {count:>8}  {site}")?;
        }
        for saved in &self.saved {
            writeln!(
                f,
                "  saved: seed {} message {} ({}, {:?}) -> {}",
                saved.seed,
                saved.index,
                saved.path,
                saved.content_type,
                saved.file.display()
            )?;
        }
        if self.unattributed_batches > 0 {
            writeln!(
                f,
                "  batches with unattributed dispatch panics: {}",
                self.unattributed_batches
            )?;
        }
        writeln!(f, "triage rigs started: {}", self.triage_probes)?;
        writeln!(
            f,
            "liveness checks passed: {}, failed: {}",
            self.liveness_checks,
            self.liveness_failures.len()
        )?;
        for failure in &self.liveness_failures {
            writeln!(f, "  {failure}")?;
        }
        writeln!(f, "decode calls: {}", self.decode.calls)?;
        for (function, count) in &self.decode.decoded {
            writeln!(f, "  decoded {count:>9}  {function}")?;
        }
        writeln!(f, "decode errors by kind:")?;
        let mut errors: Vec<_> = self.decode.errors.iter().collect();
        errors.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (kind, count) in errors {
            writeln!(f, "  {count:>9}  {kind}")?;
        }
        if !self.decode.encode_refusals.is_empty() {
            writeln!(f, "decoded but refused by the encoder:")?;
            for (kind, count) in &self.decode.encode_refusals {
                writeln!(f, "  {count:>9}  {kind}")?;
            }
        }
        writeln!(
            f,
            "round trips that changed the message: {}",
            self.decode.round_trip_mismatches
        )?;
        writeln!(f, "content types: {:?}", self.decode.content_types)?;
        writeln!(
            f,
            "dead-lettered notifications drained: {}",
            self.dead_lettered
        )?;
        match self.peak_rss_kib {
            Some(kib) => writeln!(f, "peak RSS (VmHWM): {:.1} MiB", kib as f64 / 1024.0)?,
            None => writeln!(f, "peak RSS (VmHWM): unavailable")?,
        }
        write!(f, "panicking inputs under: {}", self.out_dir.display())
    }
}

/// Peak resident set size of this process, from `/proc/self/status` (`VmHWM`, KiB).
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Runs the fuzzer. Installs the panic hook for its duration and puts the previous one back.
pub async fn run(config: &FuzzConfig) -> Result<FuzzReport, FuzzError> {
    let io = |what, path: &Path| {
        let path = path.to_owned();
        move |source| FuzzError::Io { what, path, source }
    };
    let out_dir = config
        .out_dir
        .clone()
        .unwrap_or_else(|| rig::temp_path("out"));
    let store_dir = rig::temp_dir("store").map_err(io("cannot create", &std::env::temp_dir()))?;
    let watch = PanicWatch::install();
    let result = Run::new(config, &watch, out_dir).go(&store_dir).await;
    drop(watch);
    rig::remove_dir(&store_dir);
    result
}

/// One run's state.
struct Run<'a> {
    config: &'a FuzzConfig,
    watch: &'a PanicWatch,
    report: FuzzReport,
    saved_per_site: HashMap<String, usize>,
}

impl<'a> Run<'a> {
    fn new(config: &'a FuzzConfig, watch: &'a PanicWatch, out_dir: PathBuf) -> Self {
        Self {
            config,
            watch,
            report: FuzzReport {
                seed: config.seed,
                messages: 0,
                elapsed: Duration::ZERO,
                direct_panics: 0,
                dispatch_panics: 0,
                panic_sites: BTreeMap::new(),
                saved: Vec::new(),
                unattributed_batches: 0,
                triage_probes: 0,
                decode: DecodeStats::default(),
                liveness_checks: 0,
                liveness_failures: Vec::new(),
                dead_lettered: 0,
                peak_rss_kib: None,
                out_dir,
            },
            saved_per_site: HashMap::new(),
        }
    }

    async fn go(mut self, store_dir: &Path) -> Result<FuzzReport, FuzzError> {
        let started = Instant::now();
        let corpus = Corpus::captured();
        let name = format!("fuzz-{}-{}", std::process::id(), self.config.seed);
        let mut rig = Rig::start(
            &name,
            &StoreAt::Dir(store_dir.to_owned()),
            self.config.liveness_timeout,
        )
        .await?;
        let aim = Aim {
            reply_queue: Some(rig.reply_queue().to_owned()),
        };
        let result = self.batches(&mut rig, &corpus, &aim, started).await;
        self.report.dead_lettered = rig.dead_lettered();
        rig.stop().await;
        result?;
        self.report.elapsed = started.elapsed();
        self.report.peak_rss_kib = peak_rss_kib();
        Ok(self.report)
    }

    async fn batches(
        &mut self,
        rig: &mut Rig,
        corpus: &Corpus,
        aim: &Aim,
        started: Instant,
    ) -> Result<(), FuzzError> {
        if let Err(failure) = rig.check().await {
            self.report.liveness_failures.push(failure);
            return Ok(());
        }
        self.report.liveness_checks += 1;
        let seed = self.config.seed;
        let batch_size = self.config.batch.max(1) as u64;
        let mut previous: Vec<FuzzInput> = Vec::new();
        let mut index = 0;
        while index < self.config.messages {
            let end = (index + batch_size).min(self.config.messages);
            let dispatch_before = self.watch.dispatch_count();
            let records_before = self.watch.count();
            let mut batch = Vec::with_capacity((end - index) as usize);
            for i in index..end {
                let input = mutate::input(seed, i, corpus, aim);
                self.direct(&input)?;
                rig.feed(&input).await?;
                batch.push(input);
            }
            self.report.messages = end;
            let live = rig.check().await;
            // Dispatch tasks of the batch may finish just after the check's own.
            tokio::time::sleep(Duration::from_millis(2)).await;
            let new_panics = self.watch.dispatch_count() - dispatch_before;
            if new_panics > 0 {
                self.report.dispatch_panics += new_panics;
                let sites = self.watch.dispatch_sites_since(records_before);
                for site in &sites {
                    *self.report.panic_sites.entry(site.to_string()).or_default() += 1;
                }
                let unknown = sites.iter().any(|site| {
                    self.saved_per_site
                        .get(&site.location)
                        .copied()
                        .unwrap_or(0)
                        < self.config.max_saved_per_site
                });
                if unknown {
                    let mut candidates = std::mem::take(&mut previous);
                    candidates.extend(batch.iter().cloned());
                    self.triage(candidates).await?;
                }
            }
            if let Err(failure) = live {
                self.report.liveness_failures.push(failure);
                return Ok(());
            }
            self.report.liveness_checks += 1;
            previous = batch;
            if let Some(every) = self.config.progress_every.filter(|e| *e > 0) {
                if end / every != index / every {
                    eprintln!(
                        "[{:>7.1}s] {end} messages, {} panics, peak RSS {} KiB",
                        started.elapsed().as_secs_f64(),
                        self.report.panics(),
                        peak_rss_kib().unwrap_or(0)
                    );
                }
            }
            index = end;
        }
        Ok(())
    }

    /// Path (1) for one input; a panic is counted and its input saved.
    fn direct(&mut self, input: &FuzzInput) -> Result<(), FuzzError> {
        let panics = decode::decode_all(&input.body, input.content_type, &mut self.report.decode);
        for panic in panics {
            self.report.direct_panics += 1;
            let site = self.watch.last_site().unwrap_or(PanicSite {
                location: "unknown".into(),
                message: panic.message.clone(),
            });
            *self.report.panic_sites.entry(site.to_string()).or_default() += 1;
            self.save(input, &panic.function, vec![site])?;
        }
        Ok(())
    }

    /// Writes `input` and what it caused, unless its panic location has enough inputs already.
    fn save(
        &mut self,
        input: &FuzzInput,
        path: &str,
        sites: Vec<PanicSite>,
    ) -> Result<(), FuzzError> {
        let wanted = sites.iter().any(|site| {
            self.saved_per_site
                .get(&site.location)
                .copied()
                .unwrap_or(0)
                < self.config.max_saved_per_site
        });
        if !wanted {
            return Ok(());
        }
        for site in &sites {
            *self
                .saved_per_site
                .entry(site.location.clone())
                .or_default() += 1;
        }
        let out_dir = &self.report.out_dir;
        std::fs::create_dir_all(out_dir).map_err(|source| FuzzError::Io {
            what: "cannot create",
            path: out_dir.clone(),
            source,
        })?;
        let tag = if path == "end to end" {
            "dispatch"
        } else {
            "direct"
        };
        let stem = format!("panic-{}-{}-{tag}", self.config.seed, input.index);
        let file = self.report.out_dir.join(format!("{stem}.bin"));
        std::fs::write(&file, &input.body).map_err(|source| FuzzError::Io {
            what: "cannot write",
            path: file.clone(),
            source,
        })?;
        let mut about = format!(
            "seed: {}\nmessage: {}\npath: {path}\ncontent type: {:?}\nkind: {:?}\n",
            self.config.seed, input.index, input.content_type, input.kind
        );
        for site in &sites {
            about.push_str(&format!("panic: {site}\n"));
        }
        let about_file = self.report.out_dir.join(format!("{stem}.txt"));
        std::fs::write(&about_file, about).map_err(|source| FuzzError::Io {
            what: "cannot write",
            path: about_file,
            source,
        })?;
        eprintln!(
            "panic on {path}: seed {} message {} -> {} ({})",
            self.config.seed,
            input.index,
            file.display(),
            sites
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        );
        self.report.saved.push(SavedPanic {
            seed: self.config.seed,
            index: input.index,
            path: path.to_owned(),
            sites,
            content_type: input.content_type,
            file,
        });
        Ok(())
    }

    /// Finds which of `candidates` make dispatch tasks panic, halving the set on fresh rigs.
    async fn triage(&mut self, candidates: Vec<FuzzInput>) -> Result<(), FuzzError> {
        let mut found_any = false;
        let mut stack = vec![candidates];
        while let Some(set) = stack.pop() {
            if self.report.triage_probes >= self.config.max_triage_probes {
                break;
            }
            self.report.triage_probes += 1;
            let probe = replay(
                self.watch,
                &set,
                &format!("triage-{}", self.report.triage_probes),
                self.config.liveness_timeout,
            )
            .await?;
            if probe.panics.is_empty() {
                continue;
            }
            match set.as_slice() {
                [single] => {
                    found_any = true;
                    self.save(single, "end to end", probe.panics)?;
                }
                _ => {
                    let mut first = set;
                    let second = first.split_off(first.len() / 2);
                    stack.push(second);
                    stack.push(first);
                }
            }
        }
        if !found_any {
            self.report.unattributed_batches += 1;
        }
        Ok(())
    }
}

/// What replaying inputs on a fresh rig showed.
#[derive(Clone, Debug)]
pub struct Replay {
    /// Panics in dispatch tasks (or other threads) while the inputs were served.
    pub panics: Vec<PanicSite>,
    /// The liveness check after them.
    pub liveness: Result<(), LivenessFailure>,
}

/// Feeds `inputs` to a fresh rig (brokers `memory://fuzz-NAME…`, store in memory), checks
/// liveness, and reports the dispatch panics `watch` saw meanwhile.
pub async fn replay(
    watch: &PanicWatch,
    inputs: &[FuzzInput],
    name: &str,
    timeout: Duration,
) -> Result<Replay, FuzzError> {
    let rig_name = format!("fuzz-{}-{name}", std::process::id());
    let mut rig = Rig::start(&rig_name, &StoreAt::Memory, timeout).await?;
    let records_before = watch.count();
    let dispatch_before = watch.dispatch_count();
    for input in inputs {
        rig.feed(input).await?;
    }
    let liveness = rig.check().await;
    tokio::time::sleep(Duration::from_millis(2)).await;
    let mut panics = Vec::new();
    if watch.dispatch_count() > dispatch_before {
        panics = watch.dispatch_sites_since(records_before);
    }
    rig.stop().await;
    Ok(Replay { panics, liveness })
}
