"""The transcode pipeline: probe, decode once, shared-memory ring, encoders, CMAF, HLS, DASH, gate."""
