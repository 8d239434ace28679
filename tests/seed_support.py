"""The seed platform's configuration exactly as issue 16 quotes it (shared by several tests)."""

SEED_YAML = """\
deployment: {mode: monolith, service_name: api-gateway}
server: {port: 8080, read_timeout: 30s, write_timeout: 30s}
grpc: {port: 9090}
eventbus: {type: memory, nats: {url: "nats://localhost:4222"}}
registry: {type: consul, consul: {address: "localhost:8500"}}
transcoder: {worker_pool_size: 4, max_concurrent_tasks: 16, max_queue_size: 1000, task_timeout: 3600s,
  health_check_interval: 30s, scaling_policy: {min_workers: 2, max_workers: 16, target_queue_len: 10,
  scale_up_threshold: 2.5, scale_down_threshold: 0.5, check_interval: 10s}}
"""
