"""StreamGate edge."""
