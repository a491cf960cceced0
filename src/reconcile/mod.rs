//! Reconciliation: one pass = catalog snapshot → desired → observe → diff → apply, reported as
//! one [`report::PassReport`].

pub mod controller;
pub mod pass;
pub mod report;

pub use report::{PassReport, PassResult, PlannedOp};
