//! Tandem coordinator: the sled store, the scheduler and the gRPC services; the `tandem` CLI sits on top.
