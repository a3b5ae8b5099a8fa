"""Path mapping between local roots and $Variables, and the output rewriter."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dffmpeg.paths import (
    PathMappingError,
    StreamRewriter,
    from_variables,
    map_args,
    to_variables,
    unmapped_paths,
    validate_paths,
    variables_used,
)

CLIENT = {"Media": "/mnt/media", "TV": "/mnt/media/tv", "Cache": "/var/cache/jf"}
WORKER = {"Media": "/srv/media", "TV": "/srv/tv", "Cache": "/tmp/cache"}


@pytest.mark.parametrize(
    ("local", "wire", "remote"),
    [
        ("/mnt/media/a.mkv", "$Media/a.mkv", "/srv/media/a.mkv"),
        ("file:/mnt/media/a.mkv", "file:$Media/a.mkv", "file:/srv/media/a.mkv"),
        ("/mnt/media/tv/s01.mkv", "$TV/s01.mkv", "/srv/tv/s01.mkv"),
        (
            "subtitles=f='/mnt/media/a.ass':fontsdir='/var/cache/jf/att'",
            "subtitles=f='$Media/a.ass':fontsdir='$Cache/att'",
            "subtitles=f='/srv/media/a.ass':fontsdir='/tmp/cache/att'",
        ),
        (
            "concat:/mnt/media/a.ts|/mnt/media/b.ts",
            "concat:$Media/a.ts|$Media/b.ts",
            "concat:/srv/media/a.ts|/srv/media/b.ts",
        ),
        ("/mnt/mediaextra/a.mkv", "/mnt/mediaextra/a.mkv", "/mnt/mediaextra/a.mkv"),
        ("-c:v", "-c:v", "-c:v"),
        ("/var/cache/jf", "$Cache", "/tmp/cache"),
        (
            "subtitles=f='/mnt/media/It\\'s a\\:b.ass':si=0",
            "subtitles=f='$Media/It\\'s a\\:b.ass':si=0",
            "subtitles=f='/srv/media/It\\'s a\\:b.ass':si=0",
        ),
        (
            "movie=/mnt/media/logo.png[wm];[0:v][wm]overlay",
            "movie=$Media/logo.png[wm];[0:v][wm]overlay",
            "movie=/srv/media/logo.png[wm];[0:v][wm]overlay",
        ),
        (
            "-hls_segment_filename",
            "-hls_segment_filename",
            "-hls_segment_filename",
        ),
        ("/var/cache/jf/t/x%d.ts", "$Cache/t/x%d.ts", "/tmp/cache/t/x%d.ts"),
    ],
)
def test_round_trip(local: str, wire: str, remote: str) -> None:
    assert to_variables(local, CLIENT) == wire
    assert from_variables(wire, WORKER) == remote


def test_variables_used() -> None:
    args = map_args(["-i", "/mnt/media/a.mkv", "-vf", "subtitles=f='/var/cache/jf/x.ass'"], CLIENT)
    assert variables_used(args) == {"Media", "Cache"}


def test_unknown_variable_is_left_alone() -> None:
    assert from_variables("$Other/a.mkv", WORKER) == "$Other/a.mkv"


def test_bad_mappings_are_refused() -> None:
    with pytest.raises(PathMappingError):
        validate_paths({"Media": "relative/path"})
    with pytest.raises(PathMappingError):
        validate_paths({"not a name": "/x"})
    assert validate_paths({"Media": "/x/"}) == {"Media": "/x"}


REPLACEMENTS = {b"/srv/media/": b"/mnt/media/", b"/srv/media/tv/": b"/tv/"}


def _reference(data: bytes) -> bytes:
    keys = sorted(REPLACEMENTS, key=len, reverse=True)
    pattern = re.compile(b"|".join(re.escape(k) for k in keys))
    return pattern.sub(lambda m: REPLACEMENTS[m.group(0)], data)


@given(
    st.lists(
        st.sampled_from(
            [
                b"/srv/media/",
                b"/srv/media/tv/",
                b"/srv/med",
                b"x",
                b"\r",
                b"/",
                b"\x00\xff",
                b"frame=  1 fps=0.0\r",
            ]
        ),
        max_size=40,
    ),
    st.lists(st.integers(min_value=0, max_value=400), max_size=12),
)
def test_rewriter_is_chunking_independent(parts: list[bytes], cuts: list[int]) -> None:
    data = b"".join(parts)
    rewriter = StreamRewriter(REPLACEMENTS)
    out = []
    start = 0
    for cut in sorted(c for c in cuts if c <= len(data)):
        out.append(rewriter.feed(data[start:cut]))
        start = cut
    out.append(rewriter.feed(data[start:]))
    out.append(rewriter.flush())
    assert b"".join(out) == _reference(data)


def test_rewriter_holds_back_only_possible_pattern_starts() -> None:
    rewriter = StreamRewriter(REPLACEMENTS)
    assert rewriter.feed(b"frame=1\r") == b"frame=1\r"
    assert rewriter.feed(b"see /srv/me") == b"see "
    assert rewriter.feed(b"dia/a.mkv\n") == b"/mnt/media/a.mkv\n"


WORKER_ROOTS = {"Media": "/srv/media", "Cache": "/tmp/cache"}


@pytest.mark.parametrize(
    ("args", "outside"),
    [
        (["-i", "/srv/media/a.mkv", "-y", "/tmp/cache/out.ts"], []),
        (["-i", "/etc/passwd"], ["/etc/passwd"]),
        (["-i", "file:/etc/passwd"], ["/etc/passwd"]),
        (["-i", "file:///etc/passwd"], ["/etc/passwd"]),
        (["-i", "//etc/passwd"], ["/etc/passwd"]),
        (["-i", "concat:/srv/media/a.ts|/root/b.ts"], ["/root/b.ts"]),
        (["-vf", "subtitles=f='/srv/media/a.ass':fontsdir='/etc'"], ["/etc"]),
        (["-vf", "subtitles=/srv/media/a.ass:fontsdir=/etc"], ["/etc"]),
        (["-hls_segment_filename", "/srv/media/t/x%d.ts"], []),
        (["-hls_segment_filename", "/var/x%d.ts"], ["/var/x%d.ts"]),
        (["-i", "/srv/media/../../etc/shadow"], ["/srv/media/../../etc/shadow"]),
        (["-i", "/srv/media/a/../b.mkv"], []),
        (["-i", "/srv/mediaextra/a.mkv"], ["/srv/mediaextra/a.mkv"]),
        (["-i", "/srv/media/My Movie: Part 2.mkv"], []),
        (["-i", "http://host/etc/passwd", "-i", "rtmp://h/live"], []),
        (["-r", "30000/1001", "-vf", "scale=iw/2:ih/2"], []),
        (["-f", "null", "/dev/null"], []),
        (["-i", "../../etc/passwd"], ["../../etc/passwd"]),
        (["-i", "sub/../clip.mp4"], []),
        (["-init_hw_device", "vaapi=va:/dev/dri/renderD128", "-vaapi_device", "/dev/dri/x"], []),
        (["-user_agent", "Mozilla/5.0", "-i", "http://localhost:8096/videos/a/stream"], []),
        (["-filter_complex", "[0:3]scale=1280:-1[s];[0:0][s]overlay"], []),
    ],
)
def test_unmapped_paths_are_found(args: list[str], outside: list[str]) -> None:
    assert unmapped_paths(args, WORKER_ROOTS, cwd="/srv/media/work") == outside


def test_working_directory_counts_as_a_root() -> None:
    assert unmapped_paths(["-i", "/tmp/job-1/a.ts"], WORKER_ROOTS, cwd="/tmp/job-1") == []
    assert unmapped_paths(["-i", "../x"], WORKER_ROOTS, cwd="/tmp/job-1") == ["../x"]
