"""Node-pool drivers behind one narrow Protocol, one module per backend."""
