//! The timed workloads: the daemon over its socket, the engine in this process, or both in
//! turns (the twin run).
//!
//! In turns, the daemon and the engine take a few requests each (sent back to back, as a
//! steady client sends them) on the same texts: a busy neighbour slows both alike, and the
//! threads of one, still spinning down after its turn, slow only the first request of the
//! other's (alternating every request, that cost ~0.4 ms of each one-text request, on both
//! sides). Alone, nothing of the other is in the process at all: the compute pool of an
//! engine in the benchmark's process spins on the daemon's cores after each of its turns,
//! which inflated one text's latency 1.5x on 2 cores.

use std::time::{Duration, Instant};

use crate::client::Conn;
use crate::cpu::Split;
use crate::in_process;
use crate::workload::{LONG_BATCH, SHORT_BATCH, Workload};

/// One side's timings of the three workloads.
#[derive(Default)]
pub struct Timed {
    pub short: Duration,
    pub short_tokens: u64,
    pub long: Duration,
    pub long_tokens: u64,
    /// One text a request, sorted ascending.
    pub single: Vec<Duration>,
}

/// The daemon's timings, and its CPU time by thread over the short and single workloads.
pub struct DaemonRun {
    pub timed: Timed,
    pub short_cpu: Split,
    pub single_cpu: Split,
}

/// Each request's time at the daemon and at the engine in this process, and the token counts.
#[derive(Default)]
struct Turns {
    daemon: Vec<Duration>,
    engine: Vec<Duration>,
    tokens: u64,
}

/// `texts` in requests of `batch`, to the daemon and (when given) to `engine` in turns of
/// `per_turn` requests each.
async fn in_turns(
    c: &mut Conn,
    engine: Option<&in_process::Engine<'_>>,
    texts: &[String],
    batch: usize,
    per_turn: usize,
) -> anyhow::Result<Turns> {
    let mut timed = Turns::default();
    for turn in texts.chunks(batch * per_turn) {
        for chunk in turn.chunks(batch) {
            let t = Instant::now();
            timed.tokens += c.embed(chunk).await?;
            timed.daemon.push(t.elapsed());
        }
        if let Some(engine) = engine {
            for chunk in turn.chunks(batch) {
                timed.engine.push(engine.embed(chunk).await?.0);
            }
        }
    }
    Ok(timed)
}

/// The workloads on the daemon (process `pid`) over `c`, and in turns on `engine` when given
/// (the twin run); the engine's timings are `None` without one.
pub async fn daemon(
    c: &mut Conn,
    pid: u32,
    engine: Option<&in_process::Engine<'_>>,
    w: &Workload,
) -> anyhow::Result<(DaemonRun, Option<Timed>)> {
    if let Some(e) = engine {
        e.embed(&["warm up".to_string()]).await?;
    }
    let cpu = Split::sample(pid);
    let short = in_turns(c, engine, &w.short, SHORT_BATCH, 4).await?;
    let short_cpu = Split::sample(pid) - cpu;
    let long = in_turns(c, engine, &w.long, LONG_BATCH, 2).await?;
    let cpu = Split::sample(pid);
    let mut single = in_turns(c, engine, &w.single, 1, 10).await?;
    let single_cpu = Split::sample(pid) - cpu;
    single.daemon.sort();
    single.engine.sort();
    let own = engine.map(|_| Timed {
        short: short.engine.iter().sum(),
        long: long.engine.iter().sum(),
        single: single.engine,
        ..Timed::default()
    });
    let run = DaemonRun {
        timed: Timed {
            short: short.daemon.iter().sum(),
            short_tokens: short.tokens,
            long: long.daemon.iter().sum(),
            long_tokens: long.tokens,
            single: single.daemon,
        },
        short_cpu,
        single_cpu,
    };
    Ok((run, own))
}

/// The workloads on the engine in this process alone, token counts as the daemon counts them
/// (each text's tokens, special tokens included).
pub async fn engine(e: &in_process::Engine<'_>, w: &Workload) -> anyhow::Result<Timed> {
    e.embed(&["warm up".to_string()]).await?;
    let mut timed = Timed::default();
    for chunk in w.short.chunks(SHORT_BATCH) {
        let (took, tokens) = e.embed(chunk).await?;
        (timed.short, timed.short_tokens) = (timed.short + took, timed.short_tokens + tokens);
    }
    for chunk in w.long.chunks(LONG_BATCH) {
        let (took, tokens) = e.embed(chunk).await?;
        (timed.long, timed.long_tokens) = (timed.long + took, timed.long_tokens + tokens);
    }
    for text in &w.single {
        timed
            .single
            .push(e.embed(std::slice::from_ref(text)).await?.0);
    }
    timed.single.sort();
    Ok(timed)
}
