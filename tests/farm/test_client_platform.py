"""``streamgate run`` starts the broker and the farm pool under its supervisor: a job submitted
through BrokerClient becomes a real ladder, and the edge shows the farm's figures and metrics."""

from __future__ import annotations

import json
import urllib.request

import pytest
from support import async_wait_until

from streamgate.common.broker_client import BrokerClient
from streamgate.common.config import load_config

pytestmark = pytest.mark.usefixtures("no_leaks")


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read()


async def test_run_serves_the_farm(run_platform, clip) -> None:
    platform = run_platform()
    config = load_config(env={"STREAMGATE_DATA_DIR": str(platform.data_dir)})
    client = BrokerClient(config.broker_endpoints, timeout_s=2.0)
    try:
        async def farm_up() -> bool:
            try:
                return (await client.stats()).total_workers >= 1
            except Exception:
                return False

        await async_wait_until(farm_up, timeout=60, what="broker and farm workers under streamgate run")
        from streamgate.common.protocol import JobSpec

        job = JobSpec(job_id="vid1", source=str(clip), out_dir=str(config.storage.media_dir / "vid1"),
                      settings={"ladder": [240], "preset": "ultrafast", "segment_duration": 1.0})
        assert (await client.submit(job)).accepted

        async def done() -> bool:
            info = await client.job("vid1")
            assert info is not None and info.state in ("queued", "running", "done"), info
            return info.state == "done"

        await async_wait_until(done, timeout=60, what="the job done")
        assert (config.storage.media_dir / "vid1" / "master.m3u8").is_file()
        status, body = _get(platform.url + "/api/v1/farm/metrics")
        figures = json.loads(body)
        assert status == 200 and figures["total_tasks_processed"] == 1 and figures["total_workers"] >= 1
        status, body = _get(platform.url + "/api/v1/health")
        assert json.loads(body)["checks"]["broker"]["ok"] is True
        # Prometheus, multiprocess: the broker's and the workers' series on the edge's /metrics.
        text = _get(platform.url + "/metrics")[1].decode()
        assert 'streamgate_farm_jobs_total{outcome="done"} 1.0' in text
        assert "streamgate_farm_stage_seconds_count" in text and "streamgate_farm_queue_length" in text
    finally:
        await client.close()
    assert platform.stop() == 0
