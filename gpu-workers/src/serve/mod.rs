//! Serving: model workers as supervised threads with bounded queues, batching many callers'
//! requests into few model calls.
//!
//! - [`EmbedPool`]: dynamic batching. The worker takes the first queued request, then keeps
//!   taking more until the batch holds `max_batch` texts or `max_wait` has passed since the
//!   first, and runs them as one forward pass.
//! - [`GenPool`]: continuous batching. The worker runs a step engine ([`StepEngine`], in
//!   production the generation module's `BatchEngine`); between two decoding steps new
//!   requests join the running batch and finished or abandoned ones leave it.
//!
//! In production both run on OS threads of their own, not on the node's tokio runtime: a
//! forward pass holds its cores for milliseconds to seconds, which would stall every other
//! task of a tokio worker. Callers wait on channels. The loops are async and read tokio's
//! clock, so that the simulator runs the same code as tasks on simulated time ([`Driver`]).
//!
//! **Supervision.** A model call that panics or fails fails the requests it was serving (their
//! callers get [`ServeError::WorkerFailed`], never a hang) and the worker carries on with a
//! fresh engine. A call that hangs past `hang_after` is given up by a watchdog: the requests it
//! held are failed, and a new worker thread takes over the queue (the hung thread exits when
//! its call returns, seeing it was replaced). Restarts are counted
//! (`vcos_inference_worker_restarts_total{model,reason}`).
//!
//! **Back-pressure.** The queue in front of each worker is bounded; a full queue answers
//! [`ServeError::Overloaded`] at once.

mod driver;
mod embed_pool;
mod error;
mod gen_pool;
mod imvu;
mod inference;
mod watchdog;

pub use driver::Driver;
pub use embed_pool::{EmbedBackend, EmbedOutput, EmbedPool, EmbedPoolConfig};
pub use error::ServeError;
pub use imvu::{ImvuModels, LocalModels};
pub use inference::{Chat, Inference, InferenceSettings};
pub use gen_pool::{EngineBody, EngineRunner, Flow, GenEvent, GenPool, GenPoolConfig, GenTicket, StepEngine};
