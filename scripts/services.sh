#!/usr/bin/env bash
# Local real services for the streaming tests and benchmarks, on loopback only:
#   kafka  Apache Kafka 4.1 (KRaft, one node) from Maven Central jars   127.0.0.1:9092 (controller 9093)
#   sqs    ElasticMQ from Maven Central                                 http://127.0.0.1:9324
#   s3     moto server from PyPI (in a venv)                            http://127.0.0.1:9000
#   dynamodb  a second moto server (the same venv), DynamoDB only       http://127.0.0.1:8000
#          (its own process so that its state and restarts are apart from S3's; 8000 is DynamoDB Local's port)
# Downloads are cached under .services/ (gitignored) and reused; state (Kafka log dirs, pid files, logs) too.
# Usage: scripts/services.sh up|down|status|restart|install|logs [kafka|sqs|s3|dynamodb ...]   (default: all four)
#   status exits 0 only when every named service answers its protocol probe; logs prints each one's last 40 lines.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
HERE="$ROOT/scripts/services"
SVC="$ROOT/.services"
mkdir -p "$SVC"

cmd="${1:-status}"
shift || true
services=("$@")
[ "${#services[@]}" -gt 0 ] || services=(kafka sqs s3 dynamodb)

log() { echo "services: $*" >&2; }

probe() { (cd "$ROOT" && node --import tsx "$HERE/probe.ts" "$1" 2>/dev/null); }

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Resolve a pom's runtime classpath into a lib dir once (the marker file makes later runs offline).
resolve_jars() {
  local pom="$1" dir="$2"
  if [ -f "$dir/.complete" ] && [ "$dir/.complete" -nt "$pom" ]; then return 0; fi
  log "resolving $(basename "$pom") from Maven Central into $dir (first run only)"
  rm -rf "$dir" && mkdir -p "$dir"
  mvn -q -B -f "$pom" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$dir" \
    >"$dir/../mvn.log" 2>&1 || { tail -40 "$dir/../mvn.log" >&2; log "maven resolution failed"; return 1; }
  touch "$dir/.complete"
}

install_kafka() {
  mkdir -p "$SVC/kafka"
  resolve_jars "$HERE/kafka.pom.xml" "$SVC/kafka/lib"
}

install_sqs() {
  mkdir -p "$SVC/elasticmq"
  resolve_jars "$HERE/elasticmq.pom.xml" "$SVC/elasticmq/lib"
}

install_s3() {
  local venv="$SVC/moto/venv"
  if [ -x "$venv/bin/moto_server" ]; then return 0; fi
  log "installing moto[server] from PyPI into $venv (first run only)"
  mkdir -p "$SVC/moto"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'moto[server]==5.*' >"$SVC/moto/pip.log" 2>&1 ||
    { tail -40 "$SVC/moto/pip.log" >&2; log "pip install moto failed"; return 1; }
}

kafka_java() {
  java -Xms256m -Xmx512m -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$HERE/log4j2.properties" -cp "$SVC/kafka/lib/*" "$@"
}

# DynamoDB runs from the S3 server's moto install.
install_dynamodb() { install_s3; }

start_kafka() {
  local dir="$SVC/kafka" data="$SVC/kafka/data"
  sed "s#@LOG_DIR@#$data#" "$HERE/kafka-server.properties" >"$dir/server.properties"
  if [ ! -f "$data/meta.properties" ]; then
    mkdir -p "$data"
    local id
    id="$(kafka_java kafka.tools.StorageTool random-uuid 2>>"$dir/format.log" | tail -1)"
    kafka_java kafka.tools.StorageTool format -t "$id" -c "$dir/server.properties" >>"$dir/format.log" 2>&1 ||
      { tail -30 "$dir/format.log" >&2; log "kafka storage format failed"; return 1; }
  fi
  nohup java -Xms256m -Xmx512m -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$HERE/log4j2.properties" -cp "$SVC/kafka/lib/*" \
    kafka.Kafka "$dir/server.properties" >"$dir/kafka.log" 2>&1 &
  echo $! >"$dir/pid"
}

start_sqs() {
  local dir="$SVC/elasticmq"
  nohup java -Xms64m -Xmx256m -Dconfig.file="$HERE/elasticmq.conf" -cp "$dir/lib/*" \
    org.elasticmq.server.Main >"$dir/elasticmq.log" 2>&1 &
  echo $! >"$dir/pid"
}

start_s3() {
  local dir="$SVC/moto"
  nohup "$dir/venv/bin/moto_server" -H 127.0.0.1 -p 9000 >"$dir/moto.log" 2>&1 &
  echo $! >"$dir/pid"
}

start_dynamodb() {
  local dir="$SVC/dynamodb"
  mkdir -p "$dir"
  nohup "$SVC/moto/venv/bin/moto_server" -H 127.0.0.1 -p 8000 >"$dir/moto.log" 2>&1 &
  echo $! >"$dir/pid"
}

dir_of() {
  case "$1" in
    kafka) echo "$SVC/kafka" ;; sqs) echo "$SVC/elasticmq" ;; s3) echo "$SVC/moto" ;; dynamodb) echo "$SVC/dynamodb" ;;
  esac
}
log_of() { echo "$(dir_of "$1")/$(case "$1" in kafka) echo kafka.log ;; sqs) echo elasticmq.log ;; *) echo moto.log ;; esac)"; }

ports_of() { case "$1" in kafka) echo "9092 9093" ;; sqs) echo 9324 ;; s3) echo 9000 ;; dynamodb) echo 8000 ;; esac; }
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

up_one() {
  local s="$1" dir pidf
  dir="$(dir_of "$s")"
  pidf="$dir/pid"
  if pid_alive "$pidf" && probe "$s"; then log "$s already up (pid $(cat "$pidf"))"; return 0; fi
  if pid_alive "$pidf"; then
    # A stopped (SIGSTOP) server from an interrupted outage test: resume it; if it still does not answer, replace it.
    kill -CONT "$(cat "$pidf")" 2>/dev/null || true
    for _ in 1 2 3 4 5; do probe "$s" && { log "$s resumed (pid $(cat "$pidf"))"; return 0; }; sleep 1; done
    log "$s (pid $(cat "$pidf")) does not answer: restarting it"
    down_one "$s"
  fi
  local p
  for p in $(ports_of "$s"); do
    if port_busy "$p"; then
      log "$s cannot start: 127.0.0.1:$p is already in use by another process (not one services.sh started)"
      return 1
    fi
  done
  "install_$s"
  "start_$s"
  local deadline=$((SECONDS + ${MLMF_SERVICES_TIMEOUT:-90}))
  until probe "$s"; do
    if ! pid_alive "$pidf"; then
      log "$s exited during startup; last lines of $(log_of "$s"):"
      tail -30 "$(log_of "$s")" >&2 || true
      rm -f "$pidf"
      return 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      log "$s did not answer within ${MLMF_SERVICES_TIMEOUT:-90}s; last lines of $(log_of "$s"):"
      tail -30 "$(log_of "$s")" >&2 || true
      down_one "$s"
      return 1
    fi
    sleep 1
  done
  log "$s up (pid $(cat "$pidf")), log: $(log_of "$s")"
}

down_one() {
  local s="$1" pidf
  pidf="$(dir_of "$s")/pid"
  if pid_alive "$pidf"; then
    local pid
    pid="$(cat "$pidf")"
    kill -CONT "$pid" 2>/dev/null || true
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
    log "$s stopped"
  fi
  rm -f "$pidf"
}

rc=0
case "$cmd" in
  up)
    for s in "${services[@]}"; do up_one "$s" || rc=1; done
    [ $rc = 0 ] && log "MLMF_BROKERS=127.0.0.1:9092 MLMF_SQS_ENDPOINT=http://127.0.0.1:9324 MLMF_S3_ENDPOINT=http://127.0.0.1:9000 MLMF_DYNAMODB_ENDPOINT=http://127.0.0.1:8000"
    ;;
  down)
    for s in "${services[@]}"; do down_one "$s"; done
    ;;
  restart)
    for s in "${services[@]}"; do down_one "$s"; up_one "$s" || rc=1; done
    ;;
  install)
    # Downloads only (cached under .services/): e.g. the jars a test's private Kafka broker runs from.
    for s in "${services[@]}"; do "install_$s" || rc=1; done
    ;;
  status)
    for s in "${services[@]}"; do
      if probe "$s"; then echo "$s: up ($(log_of "$s"))"; else echo "$s: down"; rc=1; fi
    done
    ;;
  logs)
    for s in "${services[@]}"; do echo "== $s: $(log_of "$s")"; tail -40 "$(log_of "$s")" 2>/dev/null || true; done
    ;;
  *)
    echo "usage: $0 up|down|status|restart|install|logs [kafka|sqs|s3|dynamodb ...]" >&2
    exit 2
    ;;
esac
exit $rc
