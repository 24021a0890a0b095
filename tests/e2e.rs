//! End-to-end tests: the real `liaison` binary on 127.0.0.1 with ephemeral ports and a
//! temporary home per node. One test binary; scenarios live in `tests/e2e/`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

#[path = "e2e/harness.rs"]
mod harness;

#[path = "e2e/direct.rs"]
mod direct;

#[path = "e2e/relay.rs"]
mod relay;

#[path = "e2e/evil_relay.rs"]
mod evil_relay;

#[path = "e2e/audit.rs"]
mod audit;

#[path = "e2e/netem.rs"]
mod netem;

#[path = "e2e/impaired.rs"]
mod impaired;

#[path = "e2e/line_engine.rs"]
mod line_engine;

#[path = "e2e/local_input.rs"]
mod local_input;

#[path = "e2e/damage.rs"]
mod damage;

#[path = "e2e/kill_listener.rs"]
mod kill_listener;
