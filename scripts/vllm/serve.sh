#!/usr/bin/env bash
# Start a CPU vLLM OpenAI server on the tiny model (built by scripts/vllm/setup.sh) and wait for /health.
#
#   scripts/vllm/serve.sh --port 24010                 start in the background, pinned to one core
#   scripts/vllm/serve.sh --port 24010 --unpinned      the same on every core, at normal priority
#   scripts/vllm/serve.sh --port 24010 -- --max-num-seqs 2   extra arguments go to vLLM's api_server
#   scripts/vllm/serve.sh --stop --port 24010          stop the server started on that port
#
# Prints "pid=... url=... log=..." once /health answers 200; the server runs in its own process group
# (stop it with --stop or `kill -- -PID`). Fails with the log's tail if vLLM exits or the deadline passes.
# Settings: SLUICE_VLLM_HOME (as setup.sh), SLUICE_VLLM_CPU (the core to pin to, 0),
# SLUICE_VLLM_READY_TIMEOUT (seconds, 240), SLUICE_VLLM_MAX_NUM_SEQS (4), SLUICE_VLLM_MAX_MODEL_LEN (2048).
set -euo pipefail

VLLM_VERSION=0.32.0
MODEL_NAME=sluice-tiny-llama
home="${SLUICE_VLLM_HOME:-$HOME/.cache/sluice/vllm-cpu-$VLLM_VERSION}"
python="$home/venv/bin/python"
model_dir="$home/models/$MODEL_NAME"
host=127.0.0.1
port=""
pinned=1
stop=0
log=""
extra=()

while (( $# )); do
  case "$1" in
    --port) port="$2"; shift 2 ;;
    --host) host="$2"; shift 2 ;;
    --log) log="$2"; shift 2 ;;
    --unpinned) pinned=0; shift ;;
    --stop) stop=1; shift ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "serve.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
done
[[ -n "$port" ]] || { echo "serve.sh: --port is required" >&2; exit 2; }

run_dir="$home/run"
pid_file="$run_dir/serve-$port.pid"
mkdir -p "$run_dir"
log="${log:-$run_dir/serve-$port.log}"

if (( stop )); then
  [[ -f "$pid_file" ]] || { echo "serve.sh: no server recorded for port $port ($pid_file)" >&2; exit 1; }
  pid=$(cat "$pid_file")
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$pid_file"
  echo "stopped pid=$pid"
  exit 0
fi

[[ -x "$python" && -f "$model_dir/config.json" ]] \
  || { echo "serve.sh: no vLLM install or model under $home; run scripts/vllm/setup.sh first" >&2; exit 1; }
if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
  echo "serve.sh: something already listens on $host:$port" >&2; exit 1
fi

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
export VLLM_HOST_IP=127.0.0.1      # vLLM's internal sockets stay on loopback
export VLLM_CPU_KVCACHE_SPACE=1   # GiB of KV cache; the tiny model needs far less than the default
launcher=()
if (( pinned )); then
  # One core for every vLLM process (API server and engine core, all OpenMP threads), at low
  # priority: otherwise generation starves the other loopback servers on a 2-core machine.
  export VLLM_CPU_OMP_THREADS_BIND="${SLUICE_VLLM_CPU:-0}" VLLM_CPU_NUM_OF_RESERVED_CPU=0
  launcher=(taskset -c "${SLUICE_VLLM_CPU:-0}" nice -n 10)
fi

# `vllm serve` cannot start here: the console script looks up the version of a distribution named
# "vllm", and this build is the distribution "vllm-cpu". The module entry point is the same server.
# float32: with bfloat16 this build's worker dies of SIGILL on the first request (seen on a Xeon that
# lists amx_bf16 and avx512_bf16); the engine is then dead and every request answers 500.
command=("${launcher[@]}" "$python" -m vllm.entrypoints.openai.api_server
  --model "$model_dir" --served-model-name "$MODEL_NAME"
  --host "$host" --port "$port"
  --dtype float32 --enforce-eager
  --max-model-len "${SLUICE_VLLM_MAX_MODEL_LEN:-2048}" --max-num-seqs "${SLUICE_VLLM_MAX_NUM_SEQS:-4}"
  --seed 0 "${extra[@]}")

started=$(date +%s.%N)
echo "${command[*]}" >"$log"
setsid "${command[@]}" >>"$log" 2>&1 </dev/null &
pid=$!
echo "$pid" >"$pid_file"

deadline=$(( $(date +%s) + ${SLUICE_VLLM_READY_TIMEOUT:-240} ))
url="http://$host:$port"
while :; do
  if ! kill -0 "$pid" 2>/dev/null; then
    wait "$pid" 2>/dev/null && code=0 || code=$?
    rm -f "$pid_file"
    echo "serve.sh: vLLM exited with status $code before /health answered; the end of $log:" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
  if [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url/health" 2>/dev/null)" == 200 ]]; then
    break
  fi
  if (( $(date +%s) >= deadline )); then
    kill -TERM -- "-$pid" 2>/dev/null || true
    rm -f "$pid_file"
    echo "serve.sh: vLLM did not answer $url/health within ${SLUICE_VLLM_READY_TIMEOUT:-240} s; the end of $log:" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
  sleep 0.5
done
ready=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
echo "pid=$pid url=$url log=$log ready_seconds=$ready"
