//! Budget accounting: device-seconds accrued per job and role from heartbeats, the stop a
//! heartbeat before the budget is crossed, and the budget view with its forecast.

use super::*;

impl State {
    /// Adds device time to a job's usage and ends the job once a budget is spent.
    pub(super) fn accrue(
        &mut self,
        job_id: &str,
        activity: &str,
        seconds: f64,
        gpus: f64,
        cpus: f64,
        now: i64,
    ) -> Outcome<()> {
        let Some(job) = self.jobs.get_mut(job_id) else {
            return Ok(());
        };
        if job.status.is_final() && !job.stop_requested {
            return Ok(());
        }
        if seconds > 0.0 {
            *job.usage
                .gpu_seconds
                .entry(activity.to_string())
                .or_default() += seconds * gpus;
            *job.usage
                .cpu_seconds
                .entry(activity.to_string())
                .or_default() += seconds * cpus;
            let (gpu, cpu) = (job.usage.gpu_total(), job.usage.cpu_total());
            job.usage.recent.push((now, gpu, cpu));
            job.usage.recent.retain(|(t, _, _)| now - t <= 120_000);
        }
        let config: TrainConfig = toml::from_str(&job.spec_toml).map_err(internal)?;
        // Stop a heartbeat early rather than late: the job ends once the next interval's burn
        // (every assigned worker's devices for one interval) would reach the budget.
        let (gpu_burn, cpu_burn) = self.burn_per_interval(job_id);
        let job = &self.jobs[job_id];
        let over_gpu = config.job.gpu_hours > 0.0
            && job.usage.gpu_total() + gpu_burn >= config.job.gpu_hours * 3600.0;
        let over_cpu = config.job.cpu_hours > 0.0
            && job.usage.cpu_total() + cpu_burn >= config.job.cpu_hours * 3600.0;
        if (over_gpu || over_cpu) && !job.status.is_final() {
            let which = if over_gpu { "GPU" } else { "CPU" };
            tracing::warn!(job = job_id, which, "budget spent, stopping the job");
            self.end_job(
                job_id,
                JobStatus::BudgetExhausted,
                &format!("the {which}-hour budget is spent"),
                now,
            )?;
        } else {
            self.db
                .write(&[Change::Job(&self.jobs[job_id])])
                .map_err(internal)?;
        }
        Ok(())
    }

    /// Device-seconds (GPU, CPU) the job's workers spend in one heartbeat interval.
    pub(super) fn burn_per_interval(&self, job_id: &str) -> (f64, f64) {
        let interval_s = self.settings.heartbeat_interval_ms as f64 / 1000.0;
        self.workers
            .values()
            .filter(|w| w.alive && w.job_id.as_deref() == Some(job_id))
            .map(|w| w.devices())
            .fold((0.0, 0.0), |(g, c), (wg, wc)| {
                (g + wg * interval_s, c + wc * interval_s)
            })
    }

    /// The budget view of a job.
    pub fn budget(&self, job_id: &str) -> Outcome<v1::BudgetUsage> {
        let job = self.job(job_id)?;
        let config: TrainConfig = toml::from_str(&job.spec_toml).map_err(internal)?;
        let usage = &job.usage;
        let roles: std::collections::BTreeSet<&String> = usage
            .gpu_seconds
            .keys()
            .chain(usage.cpu_seconds.keys())
            .collect();
        let by_role = roles
            .into_iter()
            .map(|role| v1::RoleUsage {
                role: role.clone(),
                gpu_seconds: usage.gpu_seconds.get(role).copied().unwrap_or(0.0),
                cpu_seconds: usage.cpu_seconds.get(role).copied().unwrap_or(0.0),
            })
            .collect();
        let gpu_hours_used = usage.gpu_total() / 3600.0;
        let forecast = match (usage.recent.first(), usage.recent.last()) {
            (Some(first), Some(last))
                if config.job.gpu_hours > 0.0 && last.0 > first.0 && last.1 > first.1 =>
            {
                let rate = (last.1 - first.1) / (last.0 - first.0) as f64; // GPU-seconds per ms
                let remaining = config.job.gpu_hours * 3600.0 - last.1;
                last.0 + (remaining / rate).max(0.0) as i64
            }
            _ => 0,
        };
        Ok(v1::BudgetUsage {
            job_id: job.id.clone(),
            gpu_hours_budget: config.job.gpu_hours,
            cpu_hours_budget: config.job.cpu_hours,
            gpu_hours_used,
            cpu_hours_used: usage.cpu_total() / 3600.0,
            by_role,
            cost: gpu_hours_used * config.job.price_per_gpu_hour,
            forecast_exhausted_unix_ms: forecast,
        })
    }
}
