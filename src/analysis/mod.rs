//! Answering "is it right?": the analysis the engine calls between batches.

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
}

/// The one seam between the engine and the analysis.
#[async_trait::async_trait]
pub trait Analyzer: Send + Sync {
    /// Judge the batch over the window. Errors that stop the analysis itself are `Judgement::Error`.
    async fn judge(&self, req: JudgeRequest<'_>) -> Judgement;
}

/// The analyzer used when no metric analysis is built in: it refuses to judge, so a
/// ChangeRequest that asks for analysis is held (fail-closed) rather than promoted unseen.
pub struct Unavailable;

#[async_trait::async_trait]
impl Analyzer for Unavailable {
    async fn judge(&self, _req: JudgeRequest<'_>) -> Judgement {
        Judgement::Error("no analyzer is configured in this operator".into())
    }
}
