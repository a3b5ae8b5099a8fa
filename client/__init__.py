"""The dffmpeg client: the signed API client, the CLI and the ffmpeg/ffprobe drop-in."""
