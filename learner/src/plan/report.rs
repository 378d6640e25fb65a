//! `grlo plan`'s text: a table per role, the layout, and what to change.

use std::fmt::Write;

use super::{Plan, gib};

/// The plan as people read it.
pub fn render(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} x {} ({} usable each), computing in {}",
        plan.gpus,
        plan.gpu.name,
        gib(plan.usable_per_gpu),
        match plan.precision {
            grlo_model::model::Precision::F32 => "f32",
            grlo_model::model::Precision::Bf16 => "bf16",
        }
    );
    for role in &plan.roles {
        let _ = writeln!(
            out,
            "\n{} ({:.2}B parameters): {}",
            role.role.name(),
            role.parameters as f64 / 1e9,
            gib(role.total)
        );
        for item in role.items.iter().chain(&role.notes) {
            let _ = writeln!(out, "  {:>10}  {}", gib(item.bytes), item.what);
        }
    }
    match &plan.layout {
        Some(layout) => {
            let _ = writeln!(out, "\nlayout:");
            for load in layout {
                let roles: Vec<&str> = load.roles.iter().map(|r| r.name()).collect();
                let roles = if roles.is_empty() {
                    "(idle)".to_string()
                } else {
                    roles.join(" + ")
                };
                let _ = writeln!(out, "  GPU {}: {roles}, {}", load.index, gib(load.bytes));
            }
            if !plan.settings.is_empty() {
                let _ = writeln!(out, "learner placement: {}", plan.settings.join(", "));
            }
        }
        None => {
            let _ = writeln!(out, "\nno layout");
        }
    }
    if plan.fits() {
        let _ = writeln!(out, "\nfits: yes");
    } else {
        let _ = writeln!(out, "\nfits: no");
        for problem in &plan.problems {
            let _ = writeln!(out, "  - {problem}");
        }
    }
    out
}
