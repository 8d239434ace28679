"""StreamGate farm."""
