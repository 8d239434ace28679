"""The edge exports its data dir's free space next to storage.min_free_space (StorageDegraded)."""

from __future__ import annotations

import shutil
from pathlib import Path


async def test_free_space_and_its_floor_are_exported(data_dir: Path, make_config, start_edge) -> None:
    import aiohttp
    from prometheus_client.parser import text_string_to_metric_families

    async with start_edge(make_config(data_dir)) as server, aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{server.port}/metrics") as r:
            text = await r.text()
    values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    free = shutil.disk_usage(data_dir).free
    assert abs(values["streamgate_storage_free_bytes"] - free) < 256 * 2**20
    assert values["streamgate_storage_min_free_bytes"] == 512 * 2**20
