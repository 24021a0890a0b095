//! liaison-proto
