//! Liaison node: the tokio + quinn driver around the sans-IO protocol.
pub mod store;

pub mod atrest;
pub mod audit;
pub mod control;
pub mod damage;
pub mod home;
pub mod keyfile;
pub mod line;
pub mod node;
pub mod relay_client;
pub mod secrets;
