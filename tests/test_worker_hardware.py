"""Hardware acceleration is offered only after a real one-frame check on the worker.

This machine has no GPU: every check of Debian's ffmpeg runs for real and fails, so a
worker here offers no hwaccel and no hardware codec, and an ``h264_nvenc`` job is not
routed to it. The command lines used where a device exists are checked with a recording
runner (the only stand-in: no device can be had here).
"""

from __future__ import annotations

import base64
import glob
import shutil
from pathlib import Path

import pytest

from tests.lifecycle_cluster import coordinator, submit
from worker.capabilities import parse_codecs, probe_binary
from worker.hardware import OK, HardwareCheck, codec_lines, family_of, offer_checked


def no_accelerator() -> None:
    if glob.glob("/dev/dri/*") or glob.glob("/dev/nvidia*"):
        pytest.skip("this machine has a GPU device: the no-accelerator path cannot be shown")


def test_nothing_is_offered_without_an_accelerator(ffmpeg: str) -> None:
    no_accelerator()
    entry = probe_binary(ffmpeg)
    assert entry is not None
    verdicts = entry["hardware"]
    listed = base64.b64decode(entry["probes"]["-encoders"]["stdout"])
    # Debian's build lists them all ...
    assert {"h264_nvenc", "h264_vaapi", "h264_qsv"} <= set(parse_codecs(listed))
    assert {"cuda", "vaapi", "qsv", "vulkan"} <= set(verdicts)
    # ... each was checked for real and failed, with a reason an operator can read ...
    assert all(verdict != OK for verdict in verdicts.values()), verdicts
    assert "libcuda" in verdicts["h264_nvenc"] or "cuda" in verdicts["h264_nvenc"]
    # ... so none is offered to the scheduler.
    caps = entry["capabilities"]
    assert caps["hwaccels"] == []
    for kind in ("encoders", "decoders"):
        assert not [n for n in caps[kind] if family_of(n) is not None], kind
    assert "libx264" in caps["encoders"] and "h264" in caps["decoders"]


def test_ffprobe_offers_no_hardware(ffmpeg: str) -> None:
    ffprobe = shutil.which("ffprobe")
    assert ffprobe is not None
    entry = probe_binary(ffprobe)
    assert entry is not None
    assert not [n for n in entry["capabilities"]["decoders"] if family_of(n) is not None]
    assert all(v.startswith("not checked") for v in entry["hardware"].values())


class Recorder:
    """Answers like a machine with an NVIDIA GPU and nothing else."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []

    def __call__(self, args: list[str]) -> str:
        self.commands.append(args)
        line = " ".join(args)
        if "cuda=hw" in line or "nvenc" in line or "cuvid" in line or "-hwaccel cuda" in line:
            return OK
        if " -y " in line and line.endswith(".mkv"):  # making a sample
            return OK
        return "Device creation failed: -542398533."


def test_checks_with_a_device_present() -> None:
    encoders = codec_lines(
        b" V....D h264_nvenc  NVIDIA NVENC H.264 encoder (codec h264)\n"
        b" V....D h264_vaapi  H.264/AVC (VAAPI) (codec h264)\n"
        b" V..... h264_qsv    H.264 (Intel Quick Sync Video acceleration) (codec h264)\n"
        b" V....D libx264     libx264 H.264 (codec h264)\n"
    )
    assert encoders == {"h264_nvenc": "h264", "h264_vaapi": "h264", "h264_qsv": "h264"}
    decoders = {"h264_cuvid": "h264", "hevc_cuvid": "hevc", "vc1_cuvid": "vc1"}
    runner = Recorder()
    verdicts = HardwareCheck("/usr/bin/ffmpeg", runner).verdicts(
        ["cuda", "vaapi", "qsv"], encoders, decoders, {"libx264", "mpeg2video"}
    )
    assert verdicts["cuda"] == verdicts["h264_nvenc"] == verdicts["h264_cuvid"] == OK
    assert verdicts["vaapi"].startswith("no vaapi device")
    assert verdicts["h264_qsv"].startswith("no qsv device")
    # No software HEVC or VC-1 encoder: those decoders cannot be proven, so not offered.
    assert "no hevc sample" in verdicts["hevc_cuvid"] and "no vc1 sample" in verdicts["vc1_cuvid"]
    lines = [" ".join(c) for c in runner.commands]
    # The family's device is screened once; vaapi's encoder never runs without it.
    assert sum("-init_hw_device cuda=hw" in line for line in lines) == 1
    assert not any("-c:v h264_vaapi" in line for line in lines)
    # Encode one frame; decode one frame of a sample made first; -hwaccel must really
    # decode on the device: the frame is downloaded from it (no silent fallback).
    assert any(line.endswith("-frames:v 1 -c:v h264_nvenc -f null -") for line in lines)
    assert any("-c:v libx264 -f matroska -y" in line for line in lines)
    assert any("-c:v h264_cuvid -i" in line and "h264.mkv" in line for line in lines)
    hwaccel = next(line for line in lines if "-hwaccel cuda" in line)
    assert "-hwaccel_output_format cuda" in hwaccel and "hwdownload" in hwaccel
    caps = {
        "encoders": ["h264_nvenc", "h264_vaapi", "libx264"],
        "decoders": ["h264", "h264_cuvid", "hevc_cuvid"],
        "hwaccels": ["cuda", "vaapi"],
    }
    assert offer_checked(caps, verdicts) == {
        "encoders": ["h264_nvenc", "libx264"],
        "decoders": ["h264", "h264_cuvid"],
        "hwaccels": ["cuda"],
    }


def test_vaapi_encoders_get_device_frames() -> None:
    family = family_of("hevc_vaapi")
    assert family is not None
    args = HardwareCheck("ffmpeg").encoder_args("hevc_vaapi", family)
    assert args[args.index("-init_hw_device") + 1] == "vaapi=hw"
    assert "format=nv12,hwupload" in args
    qsv = HardwareCheck("ffmpeg").hwaccel_args("qsv", Path("s.mkv"), "h264", {"h264_qsv": "h264"})
    assert qsv[qsv.index("-c:v") + 1] == "h264_qsv"  # Quick Sync decodes through its own


@pytest.mark.timeout(120)
def test_an_nvenc_job_is_not_routed_to_a_worker_without_a_gpu(tmp_path: Path) -> None:
    no_accelerator()
    with coordinator(tmp_path) as coord, coord.worker("plain", ["hwtest"]):
        worker = coord.worker_row("plain")
        checks = worker["hardware"]["ffmpeg"]
        assert checks["h264_nvenc"] != OK and checks["cuda"] != OK
        assert "h264_nvenc" not in worker["capabilities"]["ffmpeg"]["encoders"]
        api, _ = coord.client("jelly")
        args = ["-f", "lavfi", "-i", "testsrc=d=1", "-c:v", "h264_nvenc", "-f", "null", "-"]
        job_id = submit(api, args, required_labels=["hwtest"])
        job = coord.job(job_id)
        assert job["state"] == "failed" and job["failure"] == "no_capable_worker"
        assert "plain lacks encoder h264_nvenc" in job["reason"]
        accel = submit(api, ["-hwaccel", "cuda", *args[:4], "-f", "null", "-"])
        assert "hwaccel cuda" in coord.job(accel)["reason"]
        # The same job in software runs there.
        software = submit(
            api, [*args[:5], "libx264", "-f", "null", "-"], required_labels=["hwtest"]
        )
        done = coord.wait_job(software, {"completed", "failed"})
        assert done["state"] == "completed" and done["exit_code"] == 0
        assert done["worker_id"] == "plain"
