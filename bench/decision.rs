//! One backend-selection decision over 8 backends: the default Wasm
//! weighted round-robin plugin through gale's pool (what a session pays)
//! against the native smooth WRR that gale falls back to.
//!
//! Run: `cargo bench -p gale --bench decision` (release build, plugins
//! compiled from `plugins/`). Reports ns per decision as p50/p90/p99 over
//! batches of 1,000 decisions, and per-call percentiles measured one call
//! at a time (those include ~20 ns of clock reads).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use gale::config::Config;
use gale::generation::sample_context;
use gale::metrics::Metrics;
use gale::plugin::PluginRuntime;
use gale::pool::{Decider, Pool};
use gale_sdk::wrr::SmoothWrr;

const WEIGHTS: [u32; 8] = [5, 3, 2, 2, 1, 1, 1, 1];
const BATCH: usize = 1_000;
const BATCHES: usize = 300;
const SINGLE_CALLS: usize = 200_000;
/// What one Wasm decision may cost at p50 (issue 19; 500 ns before).
const TARGET_NS: f64 = 300.0;

struct Stats {
    p50: f64,
    p90: f64,
    p99: f64,
}

fn percentiles(mut v: Vec<f64>) -> Stats {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Stats {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
    }
}

fn batched(mut f: impl FnMut()) -> Stats {
    for _ in 0..20 * BATCH {
        f();
    }
    let samples = (0..BATCHES)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..BATCH {
                f();
            }
            t.elapsed().as_nanos() as f64 / BATCH as f64
        })
        .collect();
    percentiles(samples)
}

fn single(mut f: impl FnMut()) -> Stats {
    let samples = (0..SINGLE_CALLS)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_nanos() as f64
        })
        .collect();
    percentiles(samples)
}

fn main() {
    let mut toml =
        String::from("[pools.bench]\nbalancer = { builtin = \"weighted-round-robin\" }\n");
    for (i, w) in WEIGHTS.iter().enumerate() {
        toml.push_str(&format!(
            "[[pools.bench.backends]]\nname = \"mta-{i}\"\naddress = \"127.0.0.1:{}\"\nweight = {w}\n",
            2600 + i
        ));
    }
    let config = Config::parse(std::path::Path::new("bench.toml"), &toml).unwrap();
    let cache = std::env::temp_dir().join("gale-bench-cache");
    let runtime = PluginRuntime::new(Some(cache)).unwrap();
    let pool = Pool::build(&runtime, &config.pools[0], &Arc::new(Metrics::new())).unwrap();
    let ctx = sample_context();
    assert_eq!(pool.select(&ctx).decider, Decider::Plugin);

    let wasm = || {
        black_box(pool.select(black_box(&ctx)));
    };
    let mut wrr = SmoothWrr::new(&WEIGHTS);
    let mut native = || {
        // Same work as the plugin: the full order in a fresh Vec (the
        // plugin returns an owned list).
        let mut order = Vec::new();
        black_box(&mut wrr).order(&mut order);
        black_box(order);
    };

    let w = batched(wasm);
    let n = batched(&mut native);
    let ws = single(wasm);
    let ns = single(&mut native);

    println!("selection decision, 8 backends (ns/decision)");
    println!("{:<34} {:>8} {:>8} {:>8}", "", "p50", "p90", "p99");
    let row =
        |name: &str, s: &Stats| println!("{name:<34} {:>8.0} {:>8.0} {:>8.0}", s.p50, s.p90, s.p99);
    row("wasm WRR via pool (batched)", &w);
    row("native WRR (batched)", &n);
    row("wasm WRR via pool (per call)", &ws);
    row("native WRR (per call)", &ns);
    println!(
        "ratio wasm/native p50: {:.1}x batched, {:.1}x per call; wasm p50 {} the {TARGET_NS} ns target",
        w.p50 / n.p50,
        ws.p50 / ns.p50,
        if w.p50.max(ws.p50) <= TARGET_NS {
            "meets"
        } else {
            "MISSES"
        }
    );
}
