"""The load-test player's playlist reading and the summary of locust's CSV (loadtests/)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from deploy_support import REPO

sys.path.insert(0, str(REPO / "loadtests"))
from hls import PlaylistError, parse_master, parse_media  # noqa: E402
from run import summarize  # noqa: E402

MASTER = """#EXTM3U
#EXT-X-VERSION:7
#EXT-X-INDEPENDENT-SEGMENTS
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="aud",NAME="audio",DEFAULT=YES,AUTOSELECT=YES,LANGUAGE="und",URI="audio/index.m3u8"
#EXT-X-STREAM-INF:BANDWIDTH=1400000,AVERAGE-BANDWIDTH=1000000,CODECS="avc1.64001f,mp4a.40.2",RESOLUTION=854x480,AUDIO="aud"
480p/index.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=800000,CODECS="avc1.64001e,mp4a.40.2",RESOLUTION=640x360,AUDIO="aud"
360p/index.m3u8
"""

MEDIA = """#EXTM3U
#EXT-X-VERSION:7
#EXT-X-TARGETDURATION:2
#EXT-X-PLAYLIST-TYPE:VOD
#EXT-X-MAP:URI="init.mp4"
#EXTINF:2.000,
0.m4s
#EXTINF:1.500,
1.m4s
#EXT-X-ENDLIST
"""


def test_master_variants_audio_and_bandwidth_choice() -> None:
    master = parse_master(MASTER, "http://edge/videos/v1/master.m3u8")
    assert [v.uri for v in master.variants] == ["http://edge/videos/v1/480p/index.m3u8",
                                                "http://edge/videos/v1/360p/index.m3u8"]
    assert master.audio == {"aud": "http://edge/videos/v1/audio/index.m3u8"}
    assert master.pick(3e6).resolution == "854x480"
    assert master.pick(1.2e6).resolution == "640x360"  # 1.4 Mb/s does not fit 1.2 x 0.8
    assert master.pick(1e5).resolution == "640x360"  # nothing fits: the leanest


def test_media_segments_init_and_end() -> None:
    media = parse_media(MEDIA, "http://edge/videos/v1/480p/index.m3u8")
    assert media.init_uri == "http://edge/videos/v1/480p/init.mp4"
    assert [(s.uri.rsplit("/", 1)[1], s.duration) for s in media.segments] == [("0.m4s", 2.0), ("1.m4s", 1.5)]
    assert media.ended and media.target_duration == 2
    growing = parse_media(MEDIA.replace("#EXT-X-ENDLIST\n", ""), "http://edge/x/index.m3u8")
    assert not growing.ended


@pytest.mark.parametrize("text", ["", "not a playlist\n", "#EXTM3U\n#EXT-X-VERSION:7\n"])
def test_unusable_master_playlists_are_refused(text: str) -> None:
    with pytest.raises(PlaylistError):
        parse_master(text, "http://edge/m.m3u8")


def test_summary_reads_locust_stats_csv(tmp_path: Path) -> None:
    stats = tmp_path / "run_stats.csv"
    columns = ("Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,"
               "Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,"
               "50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%")
    stats.write_text(columns + "\n"
                     "GET,[rung]/[n].m4s,100,0,2,3,1,20,50000,10.0,0.0,2,2,3,3,4,6,8,9,20,20,20\n"
                     "GET,/videos/[id]/master.m3u8,20,1,1,1,1,5,500,2.0,0.1,1,1,1,1,2,3,4,5,5,5,5\n"
                     ",Aggregated,120,1,2,3,1,20,40000,12.0,0.1,2,2,3,3,4,6,8,9,20,20,20\n")
    table, total, failures = summarize(stats)
    assert (total, failures) == (120, 1)
    assert "GET [rung]/[n].m4s" in table and table.splitlines()[-1].startswith("Aggregated")
