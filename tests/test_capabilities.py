"""What a job needs (from its arguments) and what a worker's real binaries offer."""

from __future__ import annotations

import base64
import json
import subprocess

from coordinator.capabilities import derive_needs, filter_names, missing_capabilities
from worker.capabilities import PROBE_OPTIONS, parse_codecs, probe_binaries


def test_codec_options_name_encoders_and_decoders() -> None:
    needs = derive_needs(
        [
            "-hwaccel",
            "cuda",
            "-c:v",
            "h264_cuvid",
            "-threads",
            "2",
            "-i",
            "in.mkv",
            "-map",
            "0",
            "-c:v",
            "libx265",
            "-codec:a",
            "aac",
            "-c:s",
            "copy",
            "-f",
            "matroska",
            "out.mkv",
        ]
    )
    assert needs == {
        "decoders": ["h264_cuvid"],
        "encoders": ["aac", "libx265"],
        "hwaccels": ["cuda"],
        "formats": ["matroska"],
    }


def test_vcodec_acodec_and_hwaccel_auto() -> None:
    needs = derive_needs(["-hwaccel", "auto", "-i", "x", "-vcodec", "h264_nvenc", "-an", "y"])
    assert needs == {"encoders": ["h264_nvenc"]}


def test_filters_from_every_graph_option() -> None:
    needs = derive_needs(
        [
            "-i",
            "a",
            "-vf",
            "scale=1280:-2,subtitles=f='/m/x,y.ass':fontsdir='/c/att'",
            "-af",
            "loudnorm=I=-16",
            "-filter_complex",
            "[0:v]split=2[a][b];[a]hflip[c];[b][c]hstack[out]",
            "-filter:a",
            "volume=2",
            "o.mkv",
        ]
    )
    assert needs["filters"] == [
        "hflip",
        "hstack",
        "loudnorm",
        "scale",
        "split",
        "subtitles",
        "volume",
    ]


def test_filter_names_ignore_quoted_separators_and_instance_names() -> None:
    assert filter_names("drawtext=text='a,b;c':x=1,scale@s1=2:2") == {"drawtext", "scale"}


def test_missing_names_each_kind() -> None:
    caps = {k: set() for k in ("encoders", "decoders", "hwaccels", "filters", "formats")}
    caps["encoders"] = {"libx264"}
    lacking = missing_capabilities({"encoders": ["libx264", "libx265"], "filters": ["x"]}, caps)
    assert lacking == ["encoder libx265", "filter x"]
    assert missing_capabilities({"encoders": ["anything"]}, None) == []


def test_probe_reports_raw_outputs_and_parsed_names(ffmpeg: str) -> None:
    found = probe_binaries({"ffmpeg": ffmpeg, "ffprobe": "ffprobe", "nothing": "/nonexistent"})
    assert set(found) == {"ffmpeg", "ffprobe"}
    entry = found["ffmpeg"]
    assert entry["path"] == ffmpeg
    assert entry["version"].startswith("ffmpeg version ")
    assert set(entry["probes"]) == set(PROBE_OPTIONS)
    # Each probe is the raw output of `ffmpeg OPTION`, byte for byte, banner included.
    local = subprocess.run([ffmpeg, "-encoders"], capture_output=True, timeout=30)
    probe = entry["probes"]["-encoders"]
    assert base64.b64decode(probe["stdout"]) == local.stdout
    assert base64.b64decode(probe["stderr"]) == local.stderr
    assert probe["exit_code"] == local.returncode == 0
    caps = entry["capabilities"]
    assert {"libx264", "aac"} <= set(caps["encoders"])
    assert {"h264", "hevc"} <= set(caps["decoders"])
    assert {"scale", "overlay", "subtitles", "loudnorm"} & set(caps["filters"]) >= {
        "scale",
        "overlay",
    }
    assert {"mp4", "matroska", "null", "lavfi"} <= set(caps["formats"])
    assert "Encoders:" not in caps["encoders"]
    table = local.stdout.split(b" ------\n", 1)[1].splitlines()
    # Every encoder listed is offered, but hardware ones only once their check passed.
    unproven = {name for name, verdict in entry["hardware"].items() if verdict != "ok"}
    assert len(caps["encoders"]) + len(unproven & set(parse_codecs(local.stdout))) == len(table)
    # Well under the 16 MiB request limit.
    assert len(json.dumps(found)) < 2 * 1024 * 1024
