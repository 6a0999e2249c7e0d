//! STUB: replaced by the Nix executors work.
use crate::{EvalOutput, EvalRequest, Executor, JobContext, JobError, NixOptions};

/// STUB.
pub struct FlakeExecutor { _options: NixOptions }
impl FlakeExecutor {
    pub fn new(options: NixOptions) -> Self { FlakeExecutor { _options: options } }
}
impl Executor for FlakeExecutor {
    fn eval(&self, _req: &EvalRequest, _ctx: &JobContext) -> Result<EvalOutput, JobError> { Err(JobError::Failed("todo".into())) }
    fn build(&self, _drv: &str, _ctx: &JobContext) -> Result<(), JobError> { Err(JobError::Failed("todo".into())) }
    fn is_store_path_valid(&self, _path: &str) -> bool { false }
}
