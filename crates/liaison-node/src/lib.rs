//! liaison-node
