//! The seeded network simulation: a fixed set of seeds in CI, one seed replayed with
//! `TANDEM_SIM_SEED=N`, fresh random seeds with `TANDEM_SIM_RANDOM=K`. A seed that ever fails
//! becomes a named test below, so it keeps being checked.

use tandem_sim::{Sim, SimConfig};

/// Runs `seeds` with `cfg`, or only the seed in `TANDEM_SIM_SEED` (with this test's `cfg`).
fn run_seeds(seeds: std::ops::RangeInclusive<u64>, cfg: SimConfig) {
    match std::env::var("TANDEM_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(seed) => run(seed, cfg),
        None => {
            for seed in seeds {
                run(seed, cfg.clone());
            }
        }
    }
}

fn run(seed: u64, cfg: SimConfig) {
    let mut sim = Sim::new(seed, cfg).expect("set up");
    if let Err(e) = sim.run() {
        panic!(
            "simulation seed {seed} failed (replay this test with TANDEM_SIM_SEED={seed}):\n{e}"
        );
    }
    eprintln!("seed {seed}: {}", sim.summary());
}

#[test]
fn fixed_seeds_three_nodes() {
    if let Some(seed) = std::env::var("TANDEM_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        run(seed, SimConfig::default());
        return;
    }
    let random: u64 = std::env::var("TANDEM_SIM_RANDOM")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if random > 0 {
        let base = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        for k in 0..random {
            let seed = base.wrapping_mul(6364136223846793005).wrapping_add(k);
            eprintln!("seed {seed}");
            run(seed, SimConfig::default());
        }
        return;
    }
    run_seeds(1..=12, SimConfig::default());
}

#[test]
fn fixed_seeds_two_nodes_heavy_faults() {
    let cfg = SimConfig {
        nodes: 2,
        steps: 250,
        drop_per_mille: 100,
        dup_per_mille: 100,
        max_delay_ms: 80,
        fault_per_mille: 120,
    };
    run_seeds(100..=107, cfg);
}

#[test]
fn four_nodes_relay_through_partial_partitions() {
    let cfg = SimConfig {
        nodes: 4,
        steps: 200,
        ..SimConfig::default()
    };
    run_seeds(200..=203, cfg);
}
