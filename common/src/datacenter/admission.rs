//! Admission of session creates: a token bucket per device (C6).
//!
//! Invariants: a device creates at most `session_creates_per_minute` sessions a minute; the
//! bucket map holds only devices that created within the last minute (full buckets are
//! forgotten on each tick), so it stays bounded by the create rate, not the device count.

use super::*;

use crate::app::Application;
use crate::ids::DeviceId;
use crate::limits::{LimitExceeded, LimitKind};

/// A device's create budget (token bucket).
#[derive(Clone, Copy, Debug)]
pub(super) struct CreateBudget {
    pub(super) tokens: u32,
    /// When `tokens` was last brought up to date.
    pub(super) at_ms: u64,
}

impl<A: Application> DatacenterCore<A> {
    /// Whether `device` may create one more session now; takes a create token if so.
    pub(super) fn admit_create(
        &mut self,
        now_ms: u64,
        device: DeviceId,
    ) -> Result<(), LimitExceeded> {
        let active = self.by_device.get(&device).map_or(0, Vec::len);
        if active >= self.cfg.max_active_sessions_per_device {
            self.stats.limited_sessions_per_device += 1;
            return Err(LimitExceeded::new(
                LimitKind::SessionsPerDevice,
                self.cfg.max_active_sessions_per_device,
            ));
        }
        let per_minute = self.cfg.session_creates_per_minute;
        if per_minute == 0 {
            return Ok(());
        }
        let budget = self.create_budget.entry(device).or_insert(CreateBudget {
            tokens: per_minute,
            at_ms: now_ms,
        });
        Self::refill(budget, per_minute, now_ms);
        if budget.tokens == 0 {
            self.stats.limited_create_rate += 1;
            return Err(LimitExceeded::new(LimitKind::SessionCreateRate, per_minute));
        }
        budget.tokens -= 1;
        Ok(())
    }

    /// Add the tokens earned since the budget was last brought up to date (one per
    /// `60_000 / per_minute` ms, up to `per_minute`).
    pub(super) fn refill(budget: &mut CreateBudget, per_minute: u32, now_ms: u64) {
        let every_ms = (60_000 / u64::from(per_minute.max(1))).max(1);
        let earned = now_ms.saturating_sub(budget.at_ms) / every_ms;
        if earned == 0 {
            return;
        }
        let tokens = u64::from(budget.tokens).saturating_add(earned);
        if tokens >= u64::from(per_minute) {
            budget.tokens = per_minute;
            budget.at_ms = now_ms;
        } else {
            // `tokens < per_minute`, so it fits; keep the remainder of the interval.
            budget.tokens = u32::try_from(tokens).unwrap_or(per_minute);
            budget.at_ms = budget.at_ms.saturating_add(earned * every_ms);
        }
    }

    /// Devices tracked for the create rate limit (bounded: see the module docs).
    pub fn create_budget_len(&self) -> usize {
        self.create_budget.len()
    }
}
