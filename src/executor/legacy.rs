//! STUB: replaced by the Nix executors work.
use crate::{EvalOutput, EvalRequest, Executor, JobContext, JobError, NixOptions};

/// STUB.
pub struct NixExecutor { _options: NixOptions }
impl NixExecutor {
    pub fn new(options: NixOptions) -> Self { NixExecutor { _options: options } }
}
impl Executor for NixExecutor {
    fn eval(&self, _req: &EvalRequest, _ctx: &JobContext) -> Result<EvalOutput, JobError> { Err(JobError::Failed("todo".into())) }
    fn build(&self, _drv: &str, _ctx: &JobContext) -> Result<(), JobError> { Err(JobError::Failed("todo".into())) }
    fn is_store_path_valid(&self, _path: &str) -> bool { false }
}
