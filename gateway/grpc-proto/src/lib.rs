//! The messages and service generated from proto/ (Triton's names and
//! field numbers): the server half for the gateway, the client half for
//! tests and bench. A crate of its own: the generated code is expanded
//! (prost's derives, tonic's service) once, not again on every change to
//! the gateway (`scripts/dev` rebuilds the gateway on each save).
#![allow(clippy::all, missing_docs)]
tonic::include_proto!("inference");
