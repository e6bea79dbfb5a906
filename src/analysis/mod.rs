//! Answering "is it right?": the analysis the engine calls between batches.

pub mod backtest;
pub mod defaults;
pub mod history;
pub mod input;
pub mod judge;
pub mod plot;
pub mod promapi;
pub mod prometheus;
pub mod recorded;
pub mod template;

use crate::api::{AnalysisSpec, ChangeRequest};
use crate::controller::state::{JudgeWindow, Judgement};
use crate::rollout::Groups;

/// Everything one judgement looks at.
pub struct JudgeRequest<'a> {
    /// The ChangeRequest being judged.
    pub cr: &'a ChangeRequest,
    /// Its analysis section.
    pub analysis: &'a AnalysisSpec,
    /// The window to judge.
    pub window: JudgeWindow,
    /// The change and control pods of the batch.
    pub groups: Groups,
    /// When the change started (the end of the background window).
    pub change_started: jiff::Timestamp,
    /// The workload's released changes (the history group), when it keeps any.
    pub history: Option<history::History>,
}

/// The one seam between the engine and the analysis.
#[async_trait::async_trait]
pub trait Analyzer: Send + Sync {
    /// Judge the batch over the window. Errors that stop the analysis itself are `Judgement::Error`.
    async fn judge(&self, req: JudgeRequest<'_>) -> Judgement;
}
