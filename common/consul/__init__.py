"""Consul: the HTTP client, service registration, discovery and the leader lock."""
