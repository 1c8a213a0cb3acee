#!/usr/bin/env bash
# The AWS CLI walkthrough "An Amazon S3 Bucket is a Message Broker", step by step with s3stream instead of the AWS CLI:
# create a versioned bucket and a topic, publish, read the history and the latest state of a key,
# consume live while updates are written, resume from the group's checkpoint, decommission.
#
# Uses $AWS_ENDPOINT_URL (and your AWS credentials) when set; otherwise starts `s3stream dev-server`
# (an embedded S3, moto) on a free port for the duration of the script.
#   BUCKET    the bucket to create and decommission   [default: s3-ootb-broker]
#   S3STREAM  the s3stream command                    [default: s3stream]
set -euo pipefail

BUCKET="${BUCKET:-s3-ootb-broker}"
S3STREAM="${S3STREAM:-s3stream}"
TOPIC="s3://${BUCKET}/topic"
WORK="$(mktemp -d)"
PIDS=()

cleanup() {  # the last started first: consumers commit while the server they write to is still up
  local i
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    kill "${PIDS[i]}" 2>/dev/null || true
    wait "${PIDS[i]}" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

s3s() { "$S3STREAM" "$@"; }  # (background jobs call "$S3STREAM" directly: $! must be its pid)
step() { printf '\n## %s\n' "$*"; }
fail() { echo "aws-cli-walkthrough.sh: $*" >&2; exit 1; }

# wait_for FILE PID TEST...: until `TEST FILE` holds; fails after 30 s or if PID exits first.
wait_for() {
  local file=$1 pid=$2 deadline=$((SECONDS + 30))
  shift 2
  until "$@" "$file"; do
    kill -0 "$pid" 2>/dev/null || fail "process $pid exited early: $(cat "$file".err 2>/dev/null)"
    [ "$SECONDS" -lt "$deadline" ] || fail "timed out waiting on $file"
    sleep 0.1
  done
}
lines_at_least() { [ -f "$2" ] && [ "$(wc -l < "$2")" -ge "$1" ]; }
has() { grep -q "$1" "$2" 2>/dev/null; }

# caught_up GROUP: until `topic describe` shows the group's committed checkpoint covering every message.
caught_up() {
  local deadline=$((SECONDS + 30))
  until s3s topic describe "$TOPIC" | grep "^group $1: .*unconsumed 0," > /dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || fail "group $1 did not commit its checkpoint in time"
    sleep 0.2
  done
}

# stop PID: SIGTERM, then wait for it to finish cleanly (exit 0).
stop() {
  local code=0
  kill -TERM "$1"
  wait "$1" || code=$?
  [ "$code" -eq 0 ] || fail "process $1 exited with code $code"
}

body() { printf '{"id": "%s", "value": "%03d"}' "$1" "$2"; }

if [ -z "${AWS_ENDPOINT_URL:-}" ]; then
  "$S3STREAM" dev-server --port 0 > "$WORK/dev-server" 2> "$WORK/dev-server.err" &
  PIDS+=($!)
  wait_for "$WORK/dev-server" "$!" has "S3 endpoint:"
  AWS_ENDPOINT_URL="$(sed -n 's/^S3 endpoint: //p' "$WORK/dev-server")"
  export AWS_ENDPOINT_URL AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
  echo "(started s3stream dev-server at $AWS_ENDPOINT_URL)"
fi
printf '[consumer]\npoll_interval = 0.2\nmax_poll_interval = 0.5\n' > "$WORK/poll.toml"

step "Starting with nothing (the bucket does not exist)"
s3s topic list "s3://$BUCKET" 2>&1 || echo "(exit code $?)"

step "Create broker instance (a bucket with versioning)"
s3s bucket create "$BUCKET" --versioning

step "Create a topic"
s3s topic create "$TOPIC"
s3s topic list "s3://$BUCKET"

step "Publish messages to a topic (id-1.json twice, id-2.json once)"
s3s publish "$TOPIC" --key id-1.json --body "$(body 1 1)"
s3s publish "$TOPIC" --key id-1.json --body "$(body 1 2)"
s3s publish "$TOPIC" --key id-2.json --body "$(body 2 1)"

step "View the topic"
s3s topic describe "$TOPIC"

step "Consume all the states of a message by key (history of id-1.json, oldest first)"
s3s history "$TOPIC" --key id-1.json

step "Read the latest state of a message by key"
s3s get "$TOPIC" --key id-1.json
echo

step "Consume and begin polling for new messages (group walkthrough; tail shows only what is new)"
"$S3STREAM" --log-level warning consume "$TOPIC" --group walkthrough --config "$WORK/poll.toml" \
  > "$WORK/consume-1" 2> "$WORK/consume-1.err" &
consumer=$!
PIDS+=("$consumer")
"$S3STREAM" tail "$TOPIC" --poll-interval 0.2 > "$WORK/tail" 2> "$WORK/tail.err" &
tailer=$!
PIDS+=("$tailer")
wait_for "$WORK/consume-1" "$consumer" lines_at_least 3
wait_for "$WORK/tail.err" "$tailer" has "tailing"
echo "(consumer has the 3 existing messages; writing 2 keys, 2 times each, interleaved)"
for value in 3 4; do
  for id in 1 2; do
    s3s publish "$TOPIC" --key "id-$id.json" --body "$(body "$id" "$value")" > /dev/null
  done
done
wait_for "$WORK/consume-1" "$consumer" lines_at_least 7
wait_for "$WORK/tail" "$tailer" lines_at_least 4
caught_up walkthrough
stop "$consumer"
stop "$tailer"
echo "consume (JSON lines, each key in write order):"
cat "$WORK/consume-1"
echo "tail (bodies of the new messages):"
cat "$WORK/tail"

step "The group's checkpoint (nothing left to consume)"
s3s topic describe "$TOPIC" | grep '^group'

step "Resume consumption from the previous offset (ids 3 and 4 written while stopped)"
for value in 3 4; do
  for id in 3 4; do
    s3s publish "$TOPIC" --key "id-$id.json" --body "$(body "$id" "$value")" > /dev/null
  done
done
"$S3STREAM" --log-level warning consume "$TOPIC" --group walkthrough --config "$WORK/poll.toml" \
  > "$WORK/consume-2" 2> "$WORK/consume-2.err" &
consumer=$!
PIDS+=("$consumer")
wait_for "$WORK/consume-2" "$consumer" lines_at_least 4
stop "$consumer"
cat "$WORK/consume-2"

step "Decommission the broker"
s3s bucket decommission "$BUCKET" --yes
s3s topic list "s3://$BUCKET" 2>&1 || echo "(exit code $?)"
