"""StreamGate control."""
