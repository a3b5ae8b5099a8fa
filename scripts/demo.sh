#!/usr/bin/env bash
# The main job: a one-machine cluster (SQLite, HTTP transport, one worker) transcodes a
# clip generated with ffmpeg's lavfi sources through the drop-in, then shows the cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
export PATH="$PWD/.venv/bin:$PATH"

DEMO=${DEMO_DIR:-$PWD/run/demo}
PORT=${DEMO_PORT:-8470}
rm -rf "$DEMO"
mkdir -p "$DEMO/media" "$DEMO/bin"
# The client and the worker see the same media under different roots, as two machines
# mounting one share would.
ln -s "$DEMO/media" "$DEMO/client-media"
ln -s "$DEMO/media" "$DEMO/worker-media"
ln -s "$(command -v dffmpeg-proxy)" "$DEMO/bin/ffmpeg"
ln -s "$(command -v dffmpeg-proxy)" "$DEMO/bin/ffprobe"

cat > "$DEMO/coordinator.yaml" <<YAML
host: 127.0.0.1
port: $PORT
database_url: sqlite:///$DEMO/dffmpeg.db
YAML
dffmpeg-admin --config "$DEMO/coordinator.yaml" db upgrade
WORKER_KEY=$(dffmpeg-admin --config "$DEMO/coordinator.yaml" user add worker1 --role worker --key-only)
CLIENT_KEY=$(dffmpeg-admin --config "$DEMO/coordinator.yaml" user add jellyfin --role client --key-only)
ADMIN_KEY=$(dffmpeg-admin --config "$DEMO/coordinator.yaml" user add operator --role admin --key-only)
cat > "$DEMO/worker.yaml" <<YAML
client_id: worker1
hmac_key: $WORKER_KEY
coordinator_url: http://127.0.0.1:$PORT
paths: {Media: $DEMO/worker-media}
binaries: {ffmpeg: $(command -v ffmpeg), ffprobe: $(command -v ffprobe)}
slots: 2
YAML
cat > "$DEMO/client.yaml" <<YAML
client_id: jellyfin
hmac_key: $CLIENT_KEY
coordinator_url: http://127.0.0.1:$PORT
paths: {Media: $DEMO/client-media}
state_dir: $DEMO/client-state
YAML
cat > "$DEMO/admin.yaml" <<YAML
client_id: operator
hmac_key: $ADMIN_KEY
coordinator_url: http://127.0.0.1:$PORT
YAML

cleanup() { kill "$WORKER_PID" "$COORD_PID" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
dffmpeg-coordinator --config "$DEMO/coordinator.yaml" >"$DEMO/coordinator.log" 2>&1 &
COORD_PID=$!
healthy() { python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" "http://127.0.0.1:$PORT/health" 2>/dev/null; }
for _ in $(seq 100); do healthy && break; sleep 0.1; done
dffmpeg-worker --config "$DEMO/worker.yaml" >"$DEMO/worker.log" 2>&1 &
WORKER_PID=$!
# The listing is read whole before it is searched: grep -q stopping at the first match
# would break the pipe under the admin command, and pipefail would call that a failure.
online() { [[ "$(dffmpeg-admin --config "$DEMO/coordinator.yaml" worker list --json)" == *'"online"'* ]]; }
# A worker probes its binaries and hardware before it registers: on a busy machine
# that takes a minute or more.
for _ in $(seq 360); do online && break; sleep 0.5; done
online || { echo "the worker did not come online; see $DEMO/worker.log" >&2; exit 1; }

echo "== generating a 10 s test clip with lavfi"
ffmpeg -v error -f lavfi -i testsrc2=duration=10:size=1280x720:rate=25 \
  -f lavfi -i sine=frequency=440:duration=10 -c:v mpeg4 -q:v 5 -c:a mp2 \
  "$DEMO/media/source.avi"

export DFFMPEG_CLIENT_CONFIG="$DEMO/client.yaml"
echo "== transcoding through the drop-in ($DEMO/bin/ffmpeg)"
"$DEMO/bin/ffmpeg" -hide_banner -y -i "$DEMO/client-media/source.avi" \
  -c:v libx264 -preset veryfast -c:a aac "$DEMO/client-media/output.mp4"
echo "== probing the result through the drop-in"
"$DEMO/bin/ffprobe" -v error -show_entries format=filename,duration:stream=codec_name \
  -of default=noprint_wrappers=1 "$DEMO/client-media/output.mp4"
echo "== the cluster"
dffmpeg-client --config "$DEMO/admin.yaml" status --all
