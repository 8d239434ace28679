"""Playback: routes, names, files, conditional requests and ranges, delivery tiers, caches."""
