//! End-to-end test helpers: start a real coordinator and real workers on loopback.
