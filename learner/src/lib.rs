//! Learning for grlo: advantage estimators, policy-gradient and critic losses, optimisation,
//! reward sources, checkpoints, and the single-process training loop behind `grlo train`.

pub mod advantage;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod error;
pub mod evaluation;
pub mod learner;
pub mod loss;
pub mod optim;
pub mod placement;
pub mod plan;
pub mod reward;
pub mod reward_training;
pub mod rollout;
pub mod sequences;
pub mod service;
pub mod telemetry;
pub mod tracking;
pub mod trainer;
pub mod trajectory;
pub mod validation;
pub mod wire;

pub use config::TrainConfig;
pub use error::{LearnerError, Result};
pub use learner::{Learner, TrainStats};
pub use trainer::{StepMetrics, Summary, Trainer};
pub use trajectory::Trajectory;
