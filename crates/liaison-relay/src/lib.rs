//! liaison-relay
