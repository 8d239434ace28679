"""Access: Sign-In with Ethereum, tokens, nonces, rate limits, playback access."""
