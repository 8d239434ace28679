"""StreamGate common."""
