"""Hardware acceleration is offered only after it was seen to work on this machine.

An ffmpeg build lists every hardware method it was compiled with (``-hwaccels``) and
every hardware encoder and decoder (``h264_nvenc``, ``hevc_vaapi``, ``h264_cuvid``...)
whether or not the machine has the device. Offering them as listed sends an
``h264_nvenc`` job to a box without a GPU, where it fails. So each one is *checked* with
a real one-frame run of the same binary, and only those that pass are offered:

- a family that needs a device (``cuda`` for NVENC/CUVID, ``vaapi``, ``qsv``...) is
  first screened with ``-init_hw_device``; if the device cannot be created, nothing of
  the family is tried further;
- an encoder encodes one frame of a test pattern (uploaded to the device where the
  encoder only takes device frames);
- a decoder decodes one frame of a small sample this module encodes first, in the
  decoder's codec, with a software encoder;
- a ``-hwaccel`` method decodes one frame into device memory and downloads it again
  (``hwdownload``): a silent fallback to software decoding fails that download, so a
  pass proves the frame was decoded by the device.

Checks run a few at a time, each with a timeout (a wedged driver hangs ffmpeg). On a
machine with no accelerator the screens fail in a few tens of milliseconds each.
"""

from __future__ import annotations

import glob
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

OK = "ok"
CHECK_TIMEOUT = 20.0
PARALLEL_CHECKS = 4
# Wide enough for every encoder's minimum frame size, small enough to be quick.
PATTERN = "testsrc2=size=352x288:rate=25"


@dataclass(frozen=True)
class Family:
    """Hardware codecs sharing a name suffix and the device they need."""

    device: str | None  # an -init_hw_device type; None: the codecs open their own
    upload: bool = False  # its encoders take only frames in device memory
    node: str | None = None  # a device node that must exist (glob), e.g. V4L2's


FAMILIES = {
    "_nvenc": Family("cuda"),
    "_cuvid": Family("cuda"),
    "_qsv": Family("qsv"),
    "_vaapi": Family("vaapi", upload=True),
    "_vulkan": Family("vulkan", upload=True),
    "_v4l2m2m": Family(None, node="/dev/video*"),
    "_omx": Family(None),
    "_amf": Family(None),
    "_mf": Family(None),
    "_videotoolbox": Family("videotoolbox"),
    "_mediacodec": Family("mediacodec"),
    "_rkmpp": Family(None),
    "_mmal": Family(None),
}
# What a -hwaccel method decodes into (its -hwaccel_output_format).
HWACCEL_FORMATS = {
    "cuda": "cuda",
    "vaapi": "vaapi",
    "qsv": "qsv",
    "vdpau": "vdpau",
    "vulkan": "vulkan",
    "drm": "drm_prime",
    "opencl": "opencl",
    "d3d11va": "d3d11",
    "dxva2": "dxva2_vld",
    "videotoolbox": "videotoolbox_vld",
    "mediacodec": "mediacodec",
}
# Software encoders that can make a sample in a codec, best first.
SAMPLE_ENCODERS = {
    "h264": ["libx264", "libopenh264"],
    "hevc": ["libx265"],
    "mpeg2video": ["mpeg2video"],
    "mpeg1video": ["mpeg1video"],
    "mpeg4": ["mpeg4"],
    "mjpeg": ["mjpeg"],
    "h263": ["h263"],
    "vp8": ["libvpx"],
    "vp9": ["libvpx-vp9"],
    "av1": ["libsvtav1", "libaom-av1"],
}
# A decode check for a -hwaccel method uses the first of these a sample can be made in.
HWACCEL_SAMPLE_CODECS = ("h264", "mpeg2video")

# " V....D h264_nvenc   NVIDIA NVENC H.264 encoder (codec h264)"
_CODEC_LINE = re.compile(rb"^ [VASDT.][A-Z.]{5} (\S+) .*?(?:\(codec (\S+)\))?\s*$")

_CONTEXT = re.compile(r"^\[[^]]* @ 0x[0-9a-f]+\] ")

Runner = Callable[[list[str]], str]


def family_of(name: str) -> Family | None:
    for suffix, family in FAMILIES.items():
        if name.endswith(suffix):
            return family
    return None


def codec_lines(stdout: bytes) -> dict[str, str]:
    """``{name: codec}`` of the hardware entries in ``-encoders``/``-decoders`` output."""
    found: dict[str, str] = {}
    for line in stdout.splitlines():
        match = _CODEC_LINE.match(line)
        if match is None:
            continue
        name = match.group(1).decode(errors="replace")
        if family_of(name) is not None:
            codec = match.group(2).decode(errors="replace") if match.group(2) else ""
            found[name] = codec or name.rsplit("_", 1)[0]
    return found


def run_check(args: list[str]) -> str:
    """Run one check; ``ok`` or the reason it failed (ffmpeg's last error line)."""
    try:
        result = subprocess.run(
            args,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=CHECK_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"no answer within {CHECK_TIMEOUT:g} s"
    except OSError as exc:
        return str(exc)
    if result.returncode == 0:
        return OK
    # "[AVHWDeviceContext @ 0x55aa91cfd900] Cannot load libcuda.so.1": the first line
    # names the cause; the context and its address say nothing to an operator.
    lines = [
        _CONTEXT.sub("", ln).strip() for ln in result.stderr.decode(errors="replace").splitlines()
    ]
    lines = [ln for ln in lines if ln]
    return (lines[0] if lines else f"exit code {result.returncode}")[:200]


class HardwareCheck:
    """The checks of one ffmpeg binary; ``verdicts()`` runs them."""

    def __init__(self, ffmpeg: str, runner: Runner = run_check) -> None:
        self.ffmpeg = ffmpeg
        self.run = runner
        self.base = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error"]

    # -- command lines -----------------------------------------------------------------

    def device_args(self, device: str) -> list[str]:
        return [
            *self.base,
            *("-init_hw_device", f"{device}=hw", "-f", "lavfi", "-i", "nullsrc=size=64x64"),
            *("-frames:v", "1", "-f", "null", "-"),
        ]

    def encoder_args(self, encoder: str, family: Family) -> list[str]:
        args = list(self.base)
        upload: list[str] = []
        if family.upload and family.device:
            args += ["-init_hw_device", f"{family.device}=hw", "-filter_hw_device", "hw"]
            upload = ["-vf", "format=nv12,hwupload"]
        return [
            *args,
            *("-f", "lavfi", "-i", PATTERN, *upload),
            *("-frames:v", "1", "-c:v", encoder, "-f", "null", "-"),
        ]

    def decoder_args(self, decoder: str, sample: Path) -> list[str]:
        return [*self.base, "-c:v", decoder, "-i", str(sample), "-frames:v", "1", "-f", "null", "-"]

    def hwaccel_args(
        self, method: str, sample: Path, codec: str, decoders: Iterable[str]
    ) -> list[str]:
        hw_format = HWACCEL_FORMATS.get(method, method)
        # Quick Sync decodes only through its own decoders.
        own = f"{codec}_{method}"
        decoder = ["-c:v", own] if method == "qsv" and own in decoders else []
        return [
            *self.base,
            *("-hwaccel", method, "-hwaccel_output_format", hw_format, *decoder),
            *("-i", str(sample), "-frames:v", "1"),
            *("-vf", "hwdownload,format=nv12|yuv420p|p010le", "-f", "null", "-"),
        ]

    def sample_args(self, encoder: str, out: Path) -> list[str]:
        return [
            *self.base,
            *("-f", "lavfi", "-i", PATTERN, "-frames:v", "3", "-pix_fmt", "yuv420p"),
            *("-c:v", encoder, "-f", "matroska", "-y", str(out)),
        ]

    # -- the checks ------------------------------------------------------------------

    def verdicts(
        self,
        hwaccels: list[str],
        encoders: dict[str, str],
        decoders: dict[str, str],
        software_encoders: set[str],
    ) -> dict[str, str]:
        """``{name: "ok" or why not}`` for every hwaccel and hardware encoder/decoder.

        ``encoders``/``decoders`` map hardware codec names to their codec;
        ``software_encoders`` are the encoders a sample can be made with.
        """
        with ThreadPoolExecutor(PARALLEL_CHECKS) as pool:
            verdicts = self._screen(pool, hwaccels, [*encoders, *decoders])
            codecs = {c for n, c in decoders.items() if n not in verdicts}
            if set(hwaccels) - set(verdicts):
                codecs.update(HWACCEL_SAMPLE_CODECS)
            with tempfile.TemporaryDirectory(prefix="dffmpeg-hwcheck-") as tmp:
                samples = self._samples(pool, Path(tmp), software_encoders, codecs)
                checks: dict[str, list[str] | str] = {}
                for name in encoders:
                    family = family_of(name)
                    assert family is not None
                    checks[name] = self.encoder_args(name, family)
                for name, codec in decoders.items():
                    sample = samples.get(codec)
                    checks[name] = (
                        self.decoder_args(name, sample)
                        if sample
                        else f"no {codec} sample to check with (no software encoder)"
                    )
                codec = next((c for c in HWACCEL_SAMPLE_CODECS if c in samples), "")
                for method in hwaccels:
                    checks[method] = (
                        self.hwaccel_args(method, samples[codec], codec, decoders)
                        if codec
                        else "no sample to check with (no software encoder)"
                    )
                verdicts.update(
                    self._run_all(pool, {n: c for n, c in checks.items() if n not in verdicts})
                )
        return verdicts

    def _screen(
        self, pool: ThreadPoolExecutor, hwaccels: list[str], codecs: list[str]
    ) -> dict[str, str]:
        """The verdicts known before any one-frame run: families whose device cannot
        be created, or whose device node is missing."""
        devices = set(hwaccels) | {
            f.device for n in codecs if (f := family_of(n)) is not None and f.device
        }
        screens = self._run_all(pool, {d: self.device_args(d) for d in devices})
        blocked = {d: f"no {d} device: {why}" for d, why in screens.items() if why != OK}
        verdicts = {m: blocked[m] for m in hwaccels if m in blocked}
        for name in codecs:
            family = family_of(name)
            assert family is not None
            if family.device in blocked:
                verdicts[name] = blocked[family.device]
            elif family.node and not glob.glob(family.node):
                verdicts[name] = f"no {family.node} device node"
        return verdicts

    def _run_all(
        self, pool: ThreadPoolExecutor, checks: dict[str, list[str] | str]
    ) -> dict[str, str]:
        """Run the command lines at the same time (a few at once); a string is already
        a verdict."""
        commands = {n: c for n, c in checks.items() if isinstance(c, list)}
        results = dict(zip(commands, pool.map(self.run, commands.values()), strict=True))
        return {n: results[n] if isinstance(c, list) else c for n, c in checks.items()}

    def _samples(
        self, pool: ThreadPoolExecutor, tmp: Path, software: set[str], codecs: set[str]
    ) -> dict[str, Path]:
        """One small sample file per codec a check needs and a software encoder makes."""
        wanted: dict[str, list[str] | str] = {}
        for codec in sorted(codecs):
            encoder = next((e for e in SAMPLE_ENCODERS.get(codec, []) if e in software), None)
            if encoder is not None:
                wanted[codec] = self.sample_args(encoder, tmp / f"{codec}.mkv")
        made = self._run_all(pool, dict(wanted))
        return {c: tmp / f"{c}.mkv" for c, why in made.items() if why == OK}


def hardware_names(capabilities: dict[str, list[str]]) -> set[str]:
    """The names in a probe's capabilities that need a check before they are offered."""
    names = set(capabilities.get("hwaccels", []))
    for kind in ("encoders", "decoders"):
        names.update(n for n in capabilities.get(kind, []) if family_of(n) is not None)
    return names


def offer_checked(
    capabilities: dict[str, list[str]], verdicts: dict[str, str]
) -> dict[str, list[str]]:
    """``capabilities`` without the hardware names whose check did not pass."""
    unproven = {n for n in hardware_names(capabilities) if verdicts.get(n) != OK}
    return {kind: [n for n in names if n not in unproven] for kind, names in capabilities.items()}
