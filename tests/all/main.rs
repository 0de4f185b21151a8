//! wmig's end-to-end tests: one binary, a module per feature. Every test
//! starts the real `wmig` binary as a separate process.

mod api;
mod certs;
mod cli;
mod cluster;
mod corpus;
mod files;
mod gossip;
mod migration;
mod netns;
mod registry;
mod replicated;
mod ring;
mod runtime;
mod support;
