//! Reconciliation: one pass = catalog snapshot → desired → observe → diff → apply.

pub mod controller;
pub mod pass;
