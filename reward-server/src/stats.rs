//! Counters of a running reward server, and the admission control of its queue.
//!
//! The queue bound is an item count checked and reserved atomically when a request arrives,
//! before anything of it is encoded or queued; a [`QueueSlot`] gives the items back when it is
//! dropped — once the request is answered, or when its client goes away. Tests read the
//! counters; [`Stats::export`] shows them to Prometheus as `grlo_reward_server_*`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use grlo_proto::metrics::Metrics;
use grlo_proto::metrics::prometheus::{Histogram, IntCounter, IntGauge};

/// What a reward server has done so far, and what it holds now.
#[derive(Debug, Default)]
pub struct Stats {
    queued_items: AtomicUsize,
    peak_queued_items: AtomicUsize,
    model_calls: AtomicU64,
    model_items: AtomicU64,
    rule_items: AtomicU64,
    refused_requests: AtomicU64,
    exported: Option<Exported>,
}

/// The Prometheus series the counters feed, once [`Stats::export`]ed.
#[derive(Debug)]
struct Exported {
    queue_depth: IntGauge,
    batch_items: Histogram,
    model_items: IntCounter,
    rule_items: IntCounter,
    refused: IntCounter,
}

impl Stats {
    /// Counters that also feed `metrics`' series.
    pub fn export(metrics: &Metrics) -> Self {
        let exported = Exported {
            queue_depth: metrics.int_gauge(
                "queue_items",
                "Model items admitted and not answered yet (waiting, encoding or scoring)",
            ),
            batch_items: metrics.sizes(
                "batch_items",
                "Items per batch handed to the reward model",
                4096.0,
            ),
            model_items: metrics.counter(
                "model_items_scored_total",
                "Items scored by the reward model",
            ),
            rule_items: metrics
                .counter("rule_items_scored_total", "Items scored by a rule verifier"),
            refused: metrics.counter(
                "refused_requests_total",
                "Requests refused with RESOURCE_EXHAUSTED because the queue was full",
            ),
        };
        Stats {
            exported: Some(exported),
            ..Stats::default()
        }
    }

    /// Model items admitted and not answered yet: waiting, being encoded or being scored.
    pub fn queued_items(&self) -> usize {
        self.queued_items.load(Ordering::SeqCst)
    }

    /// The most model items ever admitted at once (never more than `max_queue_items`).
    pub fn peak_queued_items(&self) -> usize {
        self.peak_queued_items.load(Ordering::SeqCst)
    }

    /// Batches handed to the reward model (each one or more forward passes).
    pub fn model_calls(&self) -> u64 {
        self.model_calls.load(Ordering::SeqCst)
    }

    /// Items scored by the reward model.
    pub fn model_items(&self) -> u64 {
        self.model_items.load(Ordering::SeqCst)
    }

    /// Items scored by a rule verifier.
    pub fn rule_items(&self) -> u64 {
        self.rule_items.load(Ordering::SeqCst)
    }

    /// Requests refused with RESOURCE_EXHAUSTED because the queue was full.
    pub fn refused_requests(&self) -> u64 {
        self.refused_requests.load(Ordering::SeqCst)
    }

    /// Reserves room for `items` model items if that keeps the queue within `limit`; `None`
    /// (and one more refused request) if it does not.
    pub(crate) fn admit(self: &Arc<Self>, items: usize, limit: usize) -> Option<QueueSlot> {
        let admitted =
            self.queued_items
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |queued| {
                    queued.checked_add(items).filter(|&total| total <= limit)
                });
        match admitted {
            Ok(before) => {
                if let Some(e) = &self.exported {
                    e.queue_depth.add(items as i64);
                }
                self.peak_queued_items
                    .fetch_max(before + items, Ordering::SeqCst);
                Some(QueueSlot {
                    stats: Arc::clone(self),
                    items,
                })
            }
            Err(_) => {
                self.refused();
                None
            }
        }
    }

    /// Counts a request refused because the queue was full.
    pub(crate) fn refused(&self) {
        self.refused_requests.fetch_add(1, Ordering::SeqCst);
        if let Some(e) = &self.exported {
            e.refused.inc();
        }
    }

    pub(crate) fn record_batch(&self, items: usize) {
        self.model_calls.fetch_add(1, Ordering::SeqCst);
        self.model_items.fetch_add(items as u64, Ordering::SeqCst);
        if let Some(e) = &self.exported {
            e.batch_items.observe(items as f64);
            e.model_items.inc_by(items as u64);
        }
    }

    pub(crate) fn record_rule_items(&self, items: usize) {
        self.rule_items.fetch_add(items as u64, Ordering::SeqCst);
        if let Some(e) = &self.exported {
            e.rule_items.inc_by(items as u64);
        }
    }
}

/// Room for some model items in the queue, given back on drop.
#[derive(Debug)]
pub(crate) struct QueueSlot {
    stats: Arc<Stats>,
    items: usize,
}

impl Drop for QueueSlot {
    fn drop(&mut self) {
        self.stats
            .queued_items
            .fetch_sub(self.items, Ordering::SeqCst);
        if let Some(e) = &self.stats.exported {
            e.queue_depth.sub(self.items as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_keeps_the_queue_within_its_limit() {
        let stats = Arc::new(Stats::default());
        let a = stats.admit(3, 5).unwrap();
        assert!(stats.admit(3, 5).is_none(), "3 + 3 > 5");
        let b = stats.admit(2, 5).unwrap();
        assert_eq!(stats.queued_items(), 5);
        assert!(stats.admit(1, 5).is_none());
        drop(a);
        assert_eq!(stats.queued_items(), 2);
        let c = stats.admit(3, 5).unwrap();
        drop((b, c));
        assert_eq!(stats.queued_items(), 0);
        assert_eq!(stats.peak_queued_items(), 5);
        assert_eq!(stats.refused_requests(), 2);
        assert!(
            stats.admit(6, 5).is_none(),
            "never more than the limit at once"
        );
    }
}
