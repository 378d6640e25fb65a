//! `grlo plan`: the paper's job fits 4 x H100 80GB one model per GPU, each key the plan reads
//! moves its figures, and what does not fit says by how much and what to change.

use std::path::{Path, PathBuf};

use grlo_learner::config::{PrecisionSetting, TrainConfig};
use grlo_learner::plan::{Gpu, Plan, PlanError, Role, RoleMemory, ShapeSources, plan, render};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn paper_job() -> TrainConfig {
    TrainConfig::from_file_for_planning(&repo("configs/grlo-qwen3-4b.toml")).expect("job spec")
}

fn paper_shapes() -> ShapeSources {
    ShapeSources {
        policy: Some(repo("configs/shapes/qwen3-4b-base.json")),
        critic: None,
        reward: Some(repo("configs/shapes/skywork-reward-v2-llama-3.1-8b.json")),
    }
}

fn h100() -> Gpu {
    Gpu::named("h100-80gb").expect("known GPU")
}

fn plan_of(config: &TrainConfig, gpus: usize) -> Plan {
    plan(config, &paper_shapes(), h100(), gpus).expect("plan")
}

fn role(plan: &Plan, role: Role) -> &RoleMemory {
    plan.roles
        .iter()
        .find(|r| r.role == role)
        .unwrap_or_else(|| panic!("{role:?} in the plan"))
}

const GIB: f64 = (1u64 << 30) as f64;

fn gib(bytes: u64) -> f64 {
    bytes as f64 / GIB
}

#[test]
fn the_paper_job_fits_four_h100s_one_model_per_gpu() {
    let plan = plan_of(&paper_job(), 4);
    assert!(plan.fits(), "{}", render(&plan));

    // Qwen3-4B-Base: 4.02B parameters (tied embeddings); 16 bytes each of training state.
    let policy = role(&plan, Role::Policy);
    let billions = policy.parameters as f64 / 1e9;
    assert!((billions - 4.02).abs() < 0.01, "{billions}B");
    assert!(policy.total >= 16 * policy.parameters);
    let critic = role(&plan, Role::Critic);
    assert!(
        critic.total < plan.usable_per_gpu,
        "critic {}",
        gib(critic.total)
    );
    // Skywork-Reward-V2-Llama-3.1-8B in bf16: 7.5B parameters, 15 GB of weights.
    let reward = role(&plan, Role::RewardServer);
    assert!((reward.parameters as f64 / 1e9 - 7.5).abs() < 0.1);

    let layout = plan.layout.as_ref().expect("a layout");
    assert_eq!(layout.len(), 4);
    let gpu_of = |r: Role| {
        layout
            .iter()
            .position(|l| l.roles.contains(&r))
            .unwrap_or_else(|| panic!("{r:?} placed"))
    };
    assert_ne!(gpu_of(Role::Policy), gpu_of(Role::Critic));
    for load in layout {
        assert!(load.bytes <= plan.usable_per_gpu, "GPU {} over", load.index);
        assert!(!load.roles.is_empty(), "GPU {} idle", load.index);
    }
    // The learner's two GPUs, numbered among its own.
    assert!(
        plan.settings
            .iter()
            .any(|s| s.starts_with("actor.device = \"cuda:"))
    );
    assert!(
        plan.settings
            .iter()
            .any(|s| s.starts_with("critic.device = \"cuda:"))
    );
    let text = render(&plan);
    assert!(text.contains("fits: yes"), "{text}");
    assert!(text.contains("layout:"), "{text}");
}

#[test]
fn two_gpus_are_too_few_and_the_plan_says_how_many() {
    let plan = plan_of(&paper_job(), 2);
    assert!(!plan.fits());
    assert!(plan.layout.is_none());
    let problem = plan.problems.join("; ");
    assert!(problem.contains("need 3 x h100-80gb (have 2)"), "{problem}");
    assert!(problem.contains("--gpus 3"), "{problem}");
}

#[test]
fn without_checkpointing_the_policy_is_over_and_the_advice_turns_it_on() {
    let mut config = paper_job();
    config.actor.gradient_checkpointing = false;
    config.actor.micro_batch_tokens = 32768;
    let plan = plan_of(&config, 4);
    assert!(!plan.fits());
    let problem = plan
        .problems
        .iter()
        .find(|p| p.starts_with("policy (learner)"))
        .expect("the policy is named");
    assert!(problem.contains("GiB over"), "{problem}");
    assert!(
        problem.contains("actor.micro_batch_tokens = ")
            && problem.contains("gradient_checkpointing = true"),
        "{problem}"
    );
    // The advice's own figure fits: set what it says and plan again.
    let tokens: usize = problem
        .split("actor.micro_batch_tokens = ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("a token count in the advice");
    config.actor.micro_batch_tokens = tokens;
    config.actor.gradient_checkpointing = true;
    assert!(plan_of(&config, 4).fits());
}

#[test]
fn gradient_checkpointing_lowers_the_activations_it_reports() {
    let on = paper_job();
    let mut off = paper_job();
    off.actor.gradient_checkpointing = false;
    off.critic.gradient_checkpointing = false;
    let (on, off) = (plan_of(&on, 4), plan_of(&off, 4));
    for r in [Role::Policy, Role::Critic] {
        let activations = |plan: &Plan| {
            role(plan, r)
                .items
                .iter()
                .find(|i| i.what.starts_with("activations"))
                .expect("activations")
                .bytes
        };
        let (a_on, a_off) = (activations(&on), activations(&off));
        assert!(
            (a_off as f64) > 3.0 * a_on as f64,
            "{r:?}: on {} off {}",
            gib(a_on),
            gib(a_off)
        );
        // Each plan notes the other setting's figure.
        assert_eq!(role(&on, r).notes[0].bytes, a_off);
        assert_eq!(role(&off, r).notes[0].bytes, a_on);
    }
}

#[test]
fn micro_batch_tokens_scale_the_activations_linearly() {
    let activations = |tokens: usize, critic: bool| {
        let mut config = paper_job();
        config.actor.micro_batch_tokens = tokens;
        config.critic.micro_batch_tokens = tokens;
        let plan = plan_of(&config, 4);
        let r = if critic { Role::Critic } else { Role::Policy };
        role(&plan, r)
            .items
            .iter()
            .find(|i| i.what.starts_with("activations"))
            .map(|i| (i.bytes, i.what.clone()))
            .expect("activations")
    };
    for critic in [false, true] {
        let (two, what) = activations(8192, critic);
        assert!(what.contains("2 x 4096 tokens"), "{what}");
        let (four, what) = activations(16384, critic);
        assert!(what.contains("4 x 4096 tokens"), "{what}");
        let ratio = four as f64 / two as f64;
        // Checkpointed: the kept layer inputs double, one layer's graph doubles; the head's
        // chunked backward does not grow with rows.
        assert!((1.5..=2.05).contains(&ratio), "critic {critic}: {ratio}");
    }
}

#[test]
fn sequence_length_moves_every_role() {
    let short = {
        let mut config = paper_job();
        config.data.max_prompt_length = 512;
        config.data.max_response_length = 1536;
        plan_of(&config, 4)
    };
    let long = plan_of(&paper_job(), 4);
    for r in [Role::Policy, Role::Critic, Role::RewardServer, Role::Actor] {
        assert!(
            role(&short, r).total < role(&long, r).total,
            "{r:?}: {} vs {}",
            gib(role(&short, r).total),
            gib(role(&long, r).total)
        );
    }
    // The actor's KV cache is linear in the sequence: half the tokens, half the cache.
    let cache = |plan: &Plan| {
        role(plan, Role::Actor)
            .items
            .iter()
            .find(|i| i.what.starts_with("KV cache"))
            .expect("KV cache")
            .bytes as f64
    };
    let ratio = cache(&long) / cache(&short);
    assert!((ratio - 2.0).abs() < 1e-9, "{ratio}");
}

#[test]
fn max_batch_rows_sizes_the_kv_cache_and_the_advice_names_a_fitting_count() {
    let cache = |rows: usize| {
        let mut config = paper_job();
        config.rollout.max_batch_rows = rows;
        let plan = plan_of(&config, 4);
        let actor = role(&plan, Role::Actor);
        let cache = actor
            .items
            .iter()
            .find(|i| i.what.starts_with("KV cache"))
            .expect("KV cache")
            .bytes;
        (cache, plan)
    };
    let (c32, _) = cache(32);
    let (c64, _) = cache(64);
    assert_eq!(c64, 2 * c32);

    let (_, plan) = cache(256);
    assert!(!plan.fits());
    let problem = plan
        .problems
        .iter()
        .find(|p| p.starts_with("actor"))
        .expect("the actor is named");
    let rows: usize = problem
        .split("rollout.max_batch_rows = ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a row count in {problem}"));
    let mut config = paper_job();
    config.rollout.max_batch_rows = rows;
    assert!(role(&plan_of(&config, 4), Role::Actor).total <= plan.usable_per_gpu);
    config.rollout.max_batch_rows = rows + 1;
    assert!(role(&plan_of(&config, 4), Role::Actor).total > plan.usable_per_gpu);
}

#[test]
fn max_cache_tokens_caps_the_kv_cache() {
    let cache = |budget: usize| {
        let mut config = paper_job();
        config.rollout.max_batch_rows = 64;
        config.rollout.max_cache_tokens = budget;
        let plan = plan_of(&config, 4);
        role(&plan, Role::Actor)
            .items
            .iter()
            .find(|i| i.what.starts_with("KV cache"))
            .expect("KV cache")
            .bytes
    };
    let seq = {
        let job = paper_job();
        job.data.max_prompt_length + job.data.max_response_length
    };
    let unbounded = cache(0);
    assert_eq!(
        cache(64 * seq),
        unbounded,
        "a budget above rows x seq changes nothing"
    );
    assert_eq!(cache(16 * seq), unbounded / 4, "a quarter of the positions");
}

#[test]
fn an_external_engine_takes_a_gpu_of_its_own() {
    let mut config = paper_job();
    config.rollout.engine = grlo_learner::config::RolloutEngine::Openai;
    config.rollout.endpoints = vec!["http://127.0.0.1:30000".into()];
    let plan = plan_of(&config, 4);
    let actor = role(&plan, Role::Actor);
    assert_eq!(actor.total, plan.usable_per_gpu);
    assert!(actor.items.iter().all(|i| !i.what.starts_with("KV cache")));
    assert!(
        actor.items[0].what.contains("external engine"),
        "{:?}",
        actor.items
    );
    let builtin = plan_of(&paper_job(), 4);
    assert!(role(&builtin, Role::Actor).total < builtin.usable_per_gpu);
}

#[test]
fn reward_batch_tokens_size_the_scoring_batch() {
    let scoring = |tokens: usize| {
        let mut config = paper_job();
        config.reward.batch_tokens = tokens;
        let plan = plan_of(&config, 4);
        let item = role(&plan, Role::RewardServer)
            .items
            .iter()
            .find(|i| i.what.starts_with("scoring"))
            .expect("scoring")
            .clone();
        (item, plan)
    };
    let (small, _) = scoring(8192);
    let (large, _) = scoring(65536);
    assert!(small.what.contains("2 x 4096 tokens"), "{}", small.what);
    assert!(large.what.contains("16 x 4096 tokens"), "{}", large.what);
    assert!(large.bytes > 4 * small.bytes);

    let (_, plan) = scoring(1 << 22);
    let problem = plan
        .problems
        .iter()
        .find(|p| p.starts_with("reward server"))
        .unwrap_or_else(|| panic!("the reward server is named: {:?}", plan.problems));
    assert!(problem.contains("reward.batch_tokens = "), "{problem}");
}

#[test]
fn f32_training_needs_more_than_bf16() {
    let bf16 = plan_of(&paper_job(), 4);
    let mut config = paper_job();
    config.trainer.precision = PrecisionSetting::F32;
    let f32 = plan_of(&config, 4);
    assert_eq!(format!("{:?}", f32.precision), "F32");
    let activations = |plan: &Plan| {
        role(plan, Role::Policy)
            .items
            .iter()
            .find(|i| i.what.starts_with("activations"))
            .expect("activations")
            .bytes
    };
    assert!(activations(&f32) > activations(&bf16));
    // bf16 casts its weights: a copy of the largest shows up only there.
    let has_copy = |plan: &Plan| {
        role(plan, Role::Policy)
            .items
            .iter()
            .any(|i| i.what.contains("bf16 copy"))
    };
    assert!(has_copy(&bf16) && !has_copy(&f32));
}

#[test]
fn a_larger_gpu_holds_what_an_h100_does_not() {
    let mut config = paper_job();
    config.actor.micro_batch_tokens = 65536;
    let h100 = plan_of(&config, 4);
    assert!(!h100.fits());
    let h200 = plan(
        &config,
        &paper_shapes(),
        Gpu::named("h200-141gb").unwrap(),
        4,
    )
    .unwrap();
    assert!(
        role(&h100, Role::Policy).total == role(&h200, Role::Policy).total
            && role(&h200, Role::Policy).total <= h200.usable_per_gpu,
        "{}",
        render(&h200)
    );
}

#[test]
fn bad_input_is_named() {
    let config = paper_job();
    let err = Gpu::named("rtx-4090").unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("rtx-4090") && message.contains("h100-80gb"),
        "{message}"
    );

    let err = plan(&config, &paper_shapes(), h100(), 0).unwrap_err();
    assert!(matches!(err, PlanError::NoGpus), "{err}");

    // The job spec leaves model.policy blank: the shape must come from a flag.
    let no_policy = ShapeSources {
        policy: None,
        ..paper_shapes()
    };
    let message = plan(&config, &no_policy, h100(), 4)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("policy") && message.contains("--policy-shape"),
        "{message}"
    );
    let no_reward = ShapeSources {
        reward: None,
        ..paper_shapes()
    };
    let message = plan(&config, &no_reward, h100(), 4)
        .unwrap_err()
        .to_string();
    assert!(message.contains("--reward-shape"), "{message}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("config.json");
    std::fs::write(&bad, "{\"hidden_size\": \"wide\"}").unwrap();
    let bad_shape = ShapeSources {
        policy: Some(bad.clone()),
        ..paper_shapes()
    };
    let err = plan(&config, &bad_shape, h100(), 4).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, PlanError::BadShape { .. }), "{message}");
    assert!(message.contains(&bad.display().to_string()), "{message}");
    let missing = ShapeSources {
        policy: Some(dir.path().join("absent.json")),
        ..paper_shapes()
    };
    let message = plan(&config, &missing, h100(), 4).unwrap_err().to_string();
    assert!(message.contains("absent.json"), "{message}");
}

#[test]
fn planning_still_rejects_a_bad_job_spec() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.toml");
    let text = std::fs::read_to_string(repo("configs/grlo-qwen3-4b.toml")).unwrap();
    std::fs::write(
        &path,
        text.replace("micro_batch_tokens = 8192", "micro_batch_tokens = 0"),
    )
    .unwrap();
    let message = TrainConfig::from_file_for_planning(&path)
        .unwrap_err()
        .to_string();
    assert!(message.contains("micro_batch_tokens"), "{message}");
    // Blank locations stay an error where the job actually runs.
    let message = TrainConfig::from_file(&repo("configs/grlo-qwen3-4b.toml"))
        .unwrap_err()
        .to_string();
    assert!(message.contains("model.policy"), "{message}");
}

#[test]
fn the_tiny_job_reads_its_local_model_directories() {
    let config = TrainConfig::from_file_for_planning(&repo("configs/tiny.toml")).unwrap();
    let plan = plan(&config, &ShapeSources::default(), h100(), 2).unwrap();
    assert!(plan.fits(), "{}", render(&plan));
    let policy = role(&plan, Role::Policy);
    assert!(policy.parameters < 1_000_000, "{}", policy.parameters);
    assert!(plan.roles.iter().any(|r| r.role == Role::RewardServer));
}
