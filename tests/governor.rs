//! The governor fed a scripted memory source: pressure rises, holds and falls; the
//! actions come one level at a time with their figures, step back after the calm period,
//! and the effective batch never changes.

use dfengine::memory::governor::{Action, BatchPlan, Governor, GovernorConfig, ShrinkError};
use dfengine::memory::sample::{DeviceMemory, HostMemory, MemorySample};

const GIB: u64 = 1 << 30;

fn sample(gpu_frac: Option<f64>, host_frac: f64) -> MemorySample {
    MemorySample {
        t: 0.0,
        gpu: gpu_frac.map(|f| DeviceMemory {
            used: (f * 12.0 * GIB as f64) as u64,
            total: 12 * GIB,
            utilisation: None,
        }),
        host: HostMemory { used: (host_frac * 32.0 * GIB as f64) as u64, total: 32 * GIB, process_rss: GIB },
    }
}

fn config() -> GovernorConfig {
    GovernorConfig {
        gpu_threshold: 0.85,
        cpu_threshold: 0.80,
        calm_steps: 3,
        force_cleanup_every: 0,
        effective_batch: 12,
        micro_batch: 6,
    }
}

/// Runs `script` (one sample per step) and returns every action in order.
fn run(g: &mut Governor, script: &[MemorySample], first_step: u64) -> Vec<Action> {
    let mut actions = Vec::new();
    for (i, s) in script.iter().enumerate() {
        for d in g.observe(first_step + i as u64, s) {
            actions.push(d.action);
        }
        let plan = g.plan();
        assert_eq!(plan.micro_batch * plan.accumulation, 12, "effective batch changed: {plan:?}");
    }
    actions
}

fn plan(micro_batch: u32, accumulation: u32) -> BatchPlan {
    BatchPlan { micro_batch, accumulation }
}

#[test]
fn gpu_pressure_escalates_one_level_at_a_time_and_steps_back() {
    let mut g = Governor::new(config());
    assert_eq!(g.plan(), plan(6, 2));
    let hot = sample(Some(0.95), 0.3);
    let actions = run(&mut g, &[hot; 7], 1);
    assert_eq!(
        actions,
        [
            Action::TrimPool,
            Action::ClearCaches,
            Action::PreprocessOnCpu,
            Action::ShrinkMicroBatch(plan(3, 4)),
            // Half of 3, rounded down to a divisor of 12.
            Action::ShrinkMicroBatch(plan(1, 12)),
        ],
        "hot steps 6 and 7 have nothing left to shrink"
    );
    let reason = &g.log()[0].reason;
    assert!(
        reason.contains("GPU") && reason.contains("11.40 GiB/12.00 GiB (95%)") && reason.contains("> 85%"),
        "{reason}"
    );

    // At the threshold but not below it by the hysteresis margin: not calm, no change.
    let warm = sample(Some(0.83), 0.3);
    assert!(run(&mut g, &[warm; 6], 10).is_empty());

    let calm = sample(Some(0.50), 0.3);
    let actions = run(&mut g, &[calm; 15], 20);
    assert_eq!(
        actions,
        [Action::GrowMicroBatch(plan(3, 4)), Action::GrowMicroBatch(plan(6, 2)), Action::PreprocessOnGpu]
    );
    assert_eq!(g.level(), 0, "15 calm steps step back all 5 levels");
    assert_eq!(g.plan(), plan(6, 2));
}

#[test]
fn host_pressure_reduces_prefetch_instead_of_moving_preprocessing() {
    let mut g = Governor::new(config());
    let hot = sample(Some(0.3), 0.9);
    let actions = run(&mut g, &[hot, hot, hot], 1);
    assert_eq!(actions, [Action::TrimPool, Action::ClearCaches, Action::ReducePrefetch]);
    assert!(g.log()[2].reason.contains("host"), "{}", g.log()[2].reason);
    let actions = run(&mut g, &[sample(Some(0.3), 0.3); 9], 10);
    assert_eq!(actions, [Action::RestorePrefetch]);
    assert_eq!(g.level(), 0);
}

#[test]
fn without_a_gpu_only_host_memory_counts() {
    let mut g = Governor::new(config());
    assert!(run(&mut g, &[sample(None, 0.5); 5], 1).is_empty());
    assert_eq!(run(&mut g, &[sample(None, 0.95)], 6), [Action::TrimPool]);
}

#[test]
fn out_of_memory_shrinks_down_to_one_then_refuses() {
    let mut g = Governor::new(config());
    // The plan says every size fits: the memory went elsewhere, so each failure halves.
    let fits = |_| true;
    assert_eq!(g.on_out_of_memory(5, "requested 1 GiB", fits).unwrap(), plan(3, 4));
    assert_eq!(g.on_out_of_memory(5, "requested 1 GiB", fits).unwrap(), plan(1, 12));
    assert_eq!(g.on_out_of_memory(5, "requested 1 GiB", fits), Err(ShrinkError::AtMinimum));
    assert!(g.log().iter().all(|d| d.reason.contains("out of memory: requested 1 GiB")));
    assert!(g.log()[0].reason.contains("the plan fits micro-batch 6, so what is missing lies beyond it"));
    assert!(g.log()[0].reason.ends_with(": halved"));
    // Calm afterwards grows back through the same plans.
    let actions = run(&mut g, &[sample(Some(0.2), 0.2); 6], 6);
    assert_eq!(actions, [Action::GrowMicroBatch(plan(3, 4)), Action::GrowMicroBatch(plan(6, 2))]);
}

#[test]
fn forced_cleanup_runs_on_schedule_when_nothing_else_happened() {
    let mut g = Governor::new(GovernorConfig { force_cleanup_every: 4, ..config() });
    let calm = sample(Some(0.2), 0.2);
    let decisions: Vec<(u64, Action)> =
        (1..=9).flat_map(|step| g.observe(step, &calm)).map(|d| (d.step, d.action)).collect();
    assert_eq!(
        decisions,
        [(4, Action::TrimPool), (4, Action::ClearCaches), (8, Action::TrimPool), (8, Action::ClearCaches)]
    );
    assert!(g.log()[0].reason.contains("forced every 4 steps"));
}

#[test]
fn out_of_memory_shrinks_to_the_largest_micro_batch_the_plan_fits() {
    let mut g = Governor::new(GovernorConfig { micro_batch: 12, ..config() });
    // Halving would give 6, which the plan says does not fit either: a second failure
    // saved. 5 fits but does not divide 12; 4 is the largest divisor that fits.
    let fits = |m: u32| m <= 5;
    assert_eq!(g.on_out_of_memory(3, "requested 2 GiB", fits), Ok(plan(4, 3)));
    assert_eq!(
        g.log()[0].reason,
        "out of memory: requested 2 GiB; micro-batch 4 is the largest whose planned step fits"
    );
    // Nothing fits by the plan: micro-batch 1 is still tried, and said so.
    assert_eq!(g.on_out_of_memory(3, "requested 2 GiB", |_| false), Ok(plan(1, 12)));
    assert!(g.log()[1].reason.ends_with("no micro-batch's planned step fits: trying 1"));
    // Calm grows back through the plans it came down by.
    let actions = run(&mut g, &[sample(Some(0.2), 0.2); 6], 6);
    assert_eq!(actions, [Action::GrowMicroBatch(plan(4, 3)), Action::GrowMicroBatch(plan(12, 1))]);
}

#[test]
fn a_micro_batch_that_does_not_divide_the_effective_batch_is_rounded_down() {
    let g = Governor::new(GovernorConfig { effective_batch: 12, micro_batch: 5, ..config() });
    assert_eq!(g.plan(), plan(4, 3));
}

#[test]
fn a_switch_the_run_cannot_make_is_passed_over_unlogged() {
    use dfengine::memory::governor::Switches;
    let mut g = Governor::new(config());
    // Preprocessing on the CPU already; one batch per worker ahead already.
    g.set_switches(Switches { preprocess_to_cpu: false, fewer_prefetch: false, lean_activations: false });
    let actions = run(&mut g, &[sample(Some(0.95), 0.3); 3], 1);
    assert_eq!(actions, [Action::TrimPool, Action::ClearCaches, Action::ShrinkMicroBatch(plan(3, 4))]);
    let actions = run(&mut g, &[sample(Some(0.3), 0.3); 12], 10);
    assert_eq!(actions, [Action::GrowMicroBatch(plan(6, 2))], "nothing to undo at level 3");
    assert_eq!(g.level(), 0);
    let actions = run(&mut g, &[sample(Some(0.3), 0.9); 3], 30);
    assert_eq!(actions, [Action::TrimPool, Action::ClearCaches, Action::ShrinkMicroBatch(plan(3, 4))]);
}

#[test]
fn lean_activations_come_before_the_first_shrink_and_go_after_the_last_grow() {
    use dfengine::memory::governor::Switches;
    let mut g = Governor::new(config());
    // "auto" chose saved activations: the run can turn them lean.
    g.set_switches(Switches { preprocess_to_cpu: true, fewer_prefetch: true, lean_activations: true });
    let actions = run(&mut g, &[sample(Some(0.95), 0.3); 5], 1);
    assert_eq!(
        actions,
        [
            Action::TrimPool,
            Action::ClearCaches,
            Action::PreprocessOnCpu,
            Action::LeanActivations,
            Action::ShrinkMicroBatch(plan(3, 4)),
        ]
    );
    assert_eq!(g.log()[3].action.to_string(), "keep lean activations (recomputed in backward)");
    // An out-of-memory shrinks (the step is redone at once; no switch of modes inside it).
    assert_eq!(g.on_out_of_memory(6, "test", |_| true), Ok(plan(1, 12)));
    let actions = run(&mut g, &[sample(Some(0.3), 0.3); 18], 10);
    assert_eq!(
        actions,
        [
            Action::GrowMicroBatch(plan(3, 4)),
            Action::GrowMicroBatch(plan(6, 2)),
            Action::SavedActivations,
            Action::PreprocessOnGpu,
        ]
    );
    assert_eq!(g.level(), 0);
}
