#!/usr/bin/env bash
# Installs (when missing), starts, stops and reports the project's own PostgreSQL, Redis and Kafka on loopback.
# Idempotent: `up` leaves running services alone; `down` stops only the processes this script started
# (tracked by pid files under .data/).
#   scripts/services.sh up|down|status [postgres|redis|kafka|sentinel ...]
#   scripts/services.sh brokers          prints the Kafka bootstrap list (KAFKA_BROKERS) of these settings
#   KAFKA_NODES=3 KAFKA_PORT=19092 KAFKA_DATA_DIR=.data/cluster scripts/services.sh up kafka   a 3-node cluster
# `sentinel` (a Redis primary, one replica and three Sentinels, beside the plain Redis) is started only when
# named or when REDIS_SENTINELS is set; `down` and `status` without names include it whenever it runs.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DATA="${INGEST_DATA_DIR:-$ROOT/.data}"
CACHE="$ROOT/.cache"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
PG_PORT="${PG_PORT:-5433}"
REDIS_PORT="${REDIS_PORT:-6380}"
SENTINEL_REDIS_PORTS="${SENTINEL_REDIS_PORTS:-6385 6386}"        # the first starts as primary, the rest as replicas
SENTINEL_PORTS="${SENTINEL_PORTS:-26385 26386 26387}"
SENTINEL_MASTER="${REDIS_SENTINEL_MASTER:-ingest}"
SENTINEL_DOWN_AFTER_MS="${SENTINEL_DOWN_AFTER_MS:-2000}"
KAFKA_NODES="${KAFKA_NODES:-1}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
if [[ "$KAFKA_NODES" == 1 ]]; then
  KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
  KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx768m}"
else  # a cluster: controllers above the brokers' range; smaller heaps, as N brokers share the machine
  KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 100))}"
  KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms128m -Xmx512m}"
fi
DB_NAME="${PG_DB:-ingest}"
DB_USER="${PG_USER:-ingest}"
DB_PASSWORD="${PG_PASSWORD:-ingest}"

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

pid_alive() { [[ -f "$1" ]] && kill -0 "$(head -n1 "$1")" 2>/dev/null; }

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  ((${#missing[@]})) || return 0
  command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get to install them"
  local sudo=""; [[ $EUID -eq 0 ]] || sudo="sudo"
  log "installing ${missing[*]} (apt-get)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# ---------------------------------------------------------------- PostgreSQL
PG_DIR="$DATA/postgres"
pg_bin() { local v; v="$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -n1)"; echo "/usr/lib/postgresql/$v/bin"; }
# initdb and postgres refuse to run as root: run them as the `postgres` system user then.
as_pg() { if [[ $EUID -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }

postgres_up() {
  apt_install postgresql
  local bin; bin="$(pg_bin)"
  mkdir -p "$PG_DIR"
  [[ $EUID -eq 0 ]] && chown postgres:postgres "$PG_DIR" && chmod 700 "$PG_DIR"
  if [[ ! -f "$PG_DIR/data/PG_VERSION" ]]; then
    log "postgres: initdb in $PG_DIR/data"
    as_pg "$bin/initdb" -D "$PG_DIR/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 -E UTF8 >/dev/null
  fi
  if as_pg "$bin/pg_ctl" -D "$PG_DIR/data" status >/dev/null 2>&1; then
    log "postgres: already running on 127.0.0.1:$PG_PORT"
  else
    as_pg "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" -w -t 60 start \
      -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $PG_DIR -c max_connections=200" >/dev/null \
      || { tail -n 30 "$PG_DIR/postgres.log" >&2; die "postgres did not start"; }
    log "postgres: started on 127.0.0.1:$PG_PORT"
  fi
  local psql=("$bin/psql" -h "$PG_DIR" -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -qtA)
  if [[ "$(as_pg "${psql[@]}" -c "select 1 from pg_roles where rolname='$DB_USER'")" != 1 ]]; then
    as_pg "${psql[@]}" -c "create role \"$DB_USER\" login createdb password '$DB_PASSWORD'"
  fi
  if [[ "$(as_pg "${psql[@]}" -c "select 1 from pg_database where datname='$DB_NAME'")" != 1 ]]; then
    as_pg "${psql[@]}" -c "create database \"$DB_NAME\" owner \"$DB_USER\""
    log "postgres: created database $DB_NAME"
  fi
}
postgres_down() {
  local bin; bin="$(pg_bin)"
  if [[ -f "$PG_DIR/data/postmaster.pid" ]] && as_pg "$bin/pg_ctl" -D "$PG_DIR/data" status >/dev/null 2>&1; then
    as_pg "$bin/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null && log "postgres: stopped"
  else
    log "postgres: not running"
  fi
}
postgres_status() {
  local bin; bin="$(pg_bin)"
  if [[ -d "$PG_DIR/data" ]] && as_pg "$bin/pg_ctl" -D "$PG_DIR/data" status >/dev/null 2>&1; then
    echo "postgres  up    127.0.0.1:$PG_PORT"; else echo "postgres  down"; return 1; fi
}

# ---------------------------------------------------------------- Redis
REDIS_DIR="$DATA/redis"
redis_up() {
  apt_install redis-server
  mkdir -p "$REDIS_DIR"
  if pid_alive "$REDIS_DIR/redis.pid"; then log "redis: already running on 127.0.0.1:$REDIS_PORT"; return; fi
  # AOF with fsync every second: an event answered 202 sits in the Celery queue and must survive a restart.
  # noeviction: Redis must refuse writes rather than silently drop queued tasks when full.
  # lazyfree-lazy-expire: an expiring receipt hash (publisher.receipts) is freed off the main thread.
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$REDIS_DIR" --daemonize yes \
    --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log" \
    --appendonly yes --appendfsync everysec --maxmemory-policy noeviction --lazyfree-lazy-expire yes --save "" --protected-mode yes
  for _ in $(seq 1 50); do
    redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && { log "redis: started on 127.0.0.1:$REDIS_PORT"; return; }
    sleep 0.1
  done
  tail -n 30 "$REDIS_DIR/redis.log" >&2; die "redis did not start"
}
redis_down() {
  if pid_alive "$REDIS_DIR/redis.pid"; then
    local pid; pid="$(head -n1 "$REDIS_DIR/redis.pid")"
    redis-cli -p "$REDIS_PORT" shutdown >/dev/null 2>&1 || kill "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    log "redis: stopped"
  else
    log "redis: not running"
  fi
}
redis_status() {
  if pid_alive "$REDIS_DIR/redis.pid"; then echo "redis     up    127.0.0.1:$REDIS_PORT"; else echo "redis     down"; return 1; fi
}

# ---------------------------------------------------------------- Redis with Sentinel (primary, replica, 3 Sentinels)
# Own ports and data dirs beside the plain Redis above. Each node's and each Sentinel's config file is written once
# and then left to Redis/Sentinel, which rewrite it on a failover (replicaof, the current primary): so a node that
# is started again comes back in the role the group last gave it, and a killed primary rejoins as a replica.
SENTINEL_DIR="$DATA/sentinel"
sentinel_node_up() {
  local port="$1" primary_port="$2" dir="$SENTINEL_DIR/redis-$1"
  mkdir -p "$dir"
  if pid_alive "$dir/redis.pid"; then return; fi
  if [[ ! -f "$dir/redis.conf" ]]; then
    # Same durability as the plain Redis (AOF every second, noeviction): a queued task must survive a restart.
    {
      echo "# Written once by scripts/services.sh; Redis rewrites it (replicaof) when Sentinel reconfigures it."
      echo "bind 127.0.0.1"; echo "port $port"; echo "dir $dir"; echo "daemonize yes"
      echo "pidfile $dir/redis.pid"; echo "logfile $dir/redis.log"; echo "protected-mode yes"
      echo "appendonly yes"; echo "appendfsync everysec"; echo "maxmemory-policy noeviction"; echo 'save ""'
      echo "lazyfree-lazy-expire yes"
      [[ "$port" == "$primary_port" ]] || echo "replicaof 127.0.0.1 $primary_port"
    } > "$dir/redis.conf"
  fi
  redis-server "$dir/redis.conf"
  for _ in $(seq 1 50); do
    redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && { log "sentinel: redis started on 127.0.0.1:$port"; return; }
    sleep 0.1
  done
  tail -n 30 "$dir/redis.log" >&2; die "sentinel: redis on $port did not start"
}
sentinel_up() {
  apt_install redis-server redis-sentinel
  local ports=($SENTINEL_REDIS_PORTS) port
  for port in "${ports[@]}"; do sentinel_node_up "$port" "${ports[0]}"; done
  local quorum=$(( $(wc -w <<<"$SENTINEL_PORTS") / 2 + 1 ))
  for port in $SENTINEL_PORTS; do
    local dir="$SENTINEL_DIR/sentinel-$port"
    mkdir -p "$dir"
    if pid_alive "$dir/sentinel.pid"; then continue; fi
    if [[ ! -f "$dir/sentinel.conf" ]]; then
      {
        echo "# Written once by scripts/services.sh; Sentinel rewrites it with what it learns (primary, replicas, peers)."
        echo "bind 127.0.0.1"; echo "port $port"; echo "dir $dir"; echo "daemonize yes"
        echo "pidfile $dir/sentinel.pid"; echo "logfile $dir/sentinel.log"; echo "protected-mode no"
        echo "sentinel monitor $SENTINEL_MASTER 127.0.0.1 ${ports[0]} $quorum"
        echo "sentinel down-after-milliseconds $SENTINEL_MASTER $SENTINEL_DOWN_AFTER_MS"
        echo "sentinel failover-timeout $SENTINEL_MASTER 10000"
        echo "sentinel parallel-syncs $SENTINEL_MASTER 1"
      } > "$dir/sentinel.conf"
    fi
    redis-sentinel "$dir/sentinel.conf"
    for _ in $(seq 1 50); do redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
    redis-cli -p "$port" ping 2>/dev/null | grep -q PONG || { tail -n 30 "$dir/sentinel.log" >&2; die "sentinel on $port did not start"; }
    log "sentinel: sentinel started on 127.0.0.1:$port (master name $SENTINEL_MASTER)"
  done
}
sentinel_pidfiles() {
  local port
  for port in $SENTINEL_PORTS; do echo "$SENTINEL_DIR/sentinel-$port/sentinel.pid"; done
  for port in $SENTINEL_REDIS_PORTS; do echo "$SENTINEL_DIR/redis-$port/redis.pid"; done
}
sentinel_running() { local f; for f in $(sentinel_pidfiles); do pid_alive "$f" && return 0; done; return 1; }
sentinel_down() {
  local f pid stopped=0
  # Sentinels first, so that stopping the primary does not start a failover.
  for f in $(sentinel_pidfiles); do
    pid_alive "$f" || continue
    pid="$(head -n1 "$f")"; kill "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    stopped=$((stopped + 1))
  done
  if ((stopped)); then log "sentinel: stopped $stopped processes"; else log "sentinel: not running"; fi
}
sentinel_status() {
  local port rc=0 primary
  primary="$(for port in $SENTINEL_PORTS; do
    redis-cli -p "$port" sentinel get-master-addr-by-name "$SENTINEL_MASTER" 2>/dev/null | paste -sd: && break
  done)"
  for port in $SENTINEL_REDIS_PORTS; do
    if pid_alive "$SENTINEL_DIR/redis-$port/redis.pid"; then
      local role="replica"; [[ "$primary" == "127.0.0.1:$port" ]] && role="primary"
      echo "sentinel  up    127.0.0.1:$port redis $role"
    else echo "sentinel  down  127.0.0.1:$port redis"; rc=1; fi
  done
  for port in $SENTINEL_PORTS; do
    if pid_alive "$SENTINEL_DIR/sentinel-$port/sentinel.pid"; then echo "sentinel  up    127.0.0.1:$port sentinel ($SENTINEL_MASTER)"
    else echo "sentinel  down  127.0.0.1:$port sentinel"; rc=1; fi
  done
  return $rc
}

# ---------------------------------------------------------------- Kafka (KRaft)
# One node by default (broker and controller in one process, on KAFKA_PORT). KAFKA_NODES=N (2..9) runs a cluster of
# N such nodes instead: node i listens on KAFKA_PORT+i-1, its controller on KAFKA_CONTROLLER_PORT+i-1, its data in
# KAFKA_DATA_DIR/node-i. The cluster has its own default data dir, so it never reuses a single node's storage.
[[ "$KAFKA_NODES" =~ ^[1-9]$ ]] || die "KAFKA_NODES=$KAFKA_NODES: expected a node count from 1 to 9"
if ((KAFKA_NODES == 1)); then
  KAFKA_DIR="${KAFKA_DATA_DIR:-$DATA/kafka}"
else
  KAFKA_DIR="${KAFKA_DATA_DIR:-$DATA/kafka-cluster}"
fi
KAFKA_LIBS="$CACHE/kafka/libs"
kafka_fetch() {
  if [[ -f "$KAFKA_LIBS/.complete" && "$KAFKA_LIBS/.complete" -nt "$ROOT/kafka/pom.xml" ]]; then return; fi
  command -v mvn >/dev/null || apt_install maven
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  log "kafka: fetching broker jars from Maven Central (kafka/pom.xml)"
  rm -rf "$KAFKA_LIBS"
  mvn -B -q -f "$ROOT/kafka/pom.xml" dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$KAFKA_LIBS" >&2 || die "mvn could not fetch the Kafka jars"
  touch "$KAFKA_LIBS/.complete"
}
kafka_java() {
  java $KAFKA_HEAP_OPTS -Dlog4j2.configurationFile="$ROOT/kafka/log4j2.properties" -Dkafka.logs.dir="$KAFKA_DIR" \
    -cp "$KAFKA_LIBS/*" "$@"
}
# Node i's name, data dir and ports (a single node keeps the historical layout: no node-1 subdirectory).
node_name() { if ((KAFKA_NODES == 1)); then echo kafka; else echo "kafka-$1"; fi; }
node_dir() { if ((KAFKA_NODES == 1)); then echo "$KAFKA_DIR"; else echo "$KAFKA_DIR/node-$1"; fi; }
node_port() { echo $((KAFKA_PORT + $1 - 1)); }
node_controller_port() { echo $((KAFKA_CONTROLLER_PORT + $1 - 1)); }
kafka_bootstrap() {
  local i out=()
  for ((i = 1; i <= KAFKA_NODES; i++)); do out+=("127.0.0.1:$(node_port "$i")"); done
  (IFS=,; echo "${out[*]}")
}
kafka_config() {
  local i="$1" dir; dir="$(node_dir "$i")"
  local voters=() n
  for ((n = 1; n <= KAFKA_NODES; n++)); do voters+=("$n@127.0.0.1:$(node_controller_port "$n")"); done
  # Internal topics replicated like the event topics (ensure_topics): up to 3 copies, 2 in sync from 3 copies.
  local rf=$((KAFKA_NODES < 3 ? KAFKA_NODES : 3)); local isr=$((rf >= 3 ? 2 : 1))
  cat > "$dir/server.properties" <<PROPS
# Generated by scripts/services.sh; edit the script, not this file.
process.roles=broker,controller
node.id=$i
controller.quorum.voters=$(IFS=,; echo "${voters[*]}")
listeners=PLAINTEXT://127.0.0.1:$(node_port "$i"),CONTROLLER://127.0.0.1:$(node_controller_port "$i")
advertised.listeners=PLAINTEXT://127.0.0.1:$(node_port "$i")
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL
log.dirs=$dir/logs
num.partitions=3
# Topics are created explicitly (manage.py ensure_topics); a typo in a rule must never create one.
auto.create.topics.enable=false
offsets.topic.replication.factor=$rf
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
group.initial.rebalance.delay.ms=0
log.retention.hours=168
PROPS
}
port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# The storage of every node of a cluster must be formatted with one cluster id: kept beside the nodes' dirs.
kafka_cluster_id() {
  local file="$KAFKA_DIR/cluster.id"
  if ((KAFKA_NODES == 1)); then kafka_java kafka.tools.StorageTool random-uuid; return; fi
  [[ -s "$file" ]] || kafka_java kafka.tools.StorageTool random-uuid > "$file"
  cat "$file"
}
# Starts node i unless it runs; NODE_STARTED says which it was.
kafka_node_up() {
  local i="$1" name dir port; name="$(node_name "$i")"; dir="$(node_dir "$i")"; port="$(node_port "$i")"
  NODE_STARTED=0
  mkdir -p "$dir"
  if pid_alive "$dir/kafka.pid"; then log "$name: already running on 127.0.0.1:$port"; return; fi
  if ((KAFKA_NODES > 1)); then
    # A port answering already is someone else's broker: waiting for "our" cluster could wrongly succeed on it.
    for p in "$port" "$(node_controller_port "$i")"; do
      if port_taken "$p"; then
        die "$name: 127.0.0.1:$p is already in use (another Kafka? set KAFKA_PORT and KAFKA_CONTROLLER_PORT)"
      fi
    done
  fi
  kafka_config "$i"
  if [[ ! -f "$dir/logs/meta.properties" ]]; then
    local cluster_id; cluster_id="$(kafka_cluster_id)"
    kafka_java kafka.tools.StorageTool format -t "$cluster_id" -c "$dir/server.properties" >/dev/null \
      || die "$name: storage format failed"
    log "$name: formatted storage (cluster $cluster_id)"
  fi
  : > "$dir/server.log"
  # -Dingest.kafka.node marks a cluster node's JVM, so tools looking for "the" single broker can tell them apart.
  local marker=(); ((KAFKA_NODES == 1)) || marker=("-Dingest.kafka.node=$i")
  nohup java $KAFKA_HEAP_OPTS -XX:+UseG1GC -Djava.awt.headless=true "${marker[@]}" \
    -Dlog4j2.configurationFile="$ROOT/kafka/log4j2.properties" -Dkafka.logs.dir="$dir" \
    -cp "$KAFKA_LIBS/*" kafka.Kafka "$dir/server.properties" > "$dir/stdout.log" 2>&1 &
  echo $! > "$dir/kafka.pid"
  NODE_STARTED=1
}
kafka_up() {
  kafka_fetch
  local i started=() pids=()
  for ((i = 1; i <= KAFKA_NODES; i++)); do
    kafka_node_up "$i"
    ((NODE_STARTED)) && started+=("$i")
    pid_alive "$(node_dir "$i")/kafka.pid" && pids+=(--pid "$(head -n1 "$(node_dir "$i")/kafka.pid")")
  done
  ((${#started[@]})) || return 0
  local bootstrap; bootstrap="$(kafka_bootstrap)"
  # A cluster is up once a metadata request lists every node (the quorum formed and each broker registered).
  if ! "$PYTHON" "$ROOT/scripts/wait_kafka.py" "$bootstrap" --timeout 60 --brokers "$KAFKA_NODES" "${pids[@]}"; then
    for i in "${started[@]}"; do
      local dir; dir="$(node_dir "$i")"
      echo "----- tail of $dir/server.log -----" >&2; tail -n 40 "$dir/server.log" >&2 || true
      echo "----- tail of $dir/stdout.log -----" >&2; tail -n 20 "$dir/stdout.log" >&2 || true
    done
    die "kafka did not answer a metadata request on $bootstrap within 60 s"
  fi
  for i in "${started[@]}"; do log "$(node_name "$i"): started on 127.0.0.1:$(node_port "$i")"; done
  ((KAFKA_NODES == 1)) || log "kafka: cluster of $KAFKA_NODES nodes; KAFKA_BROKERS=$bootstrap"
}
kafka_down() {
  # Every node is asked to stop at once: stopping them one after the other makes the last ones wait for a
  # controller quorum that is already gone.
  local i pids=()
  for ((i = 1; i <= KAFKA_NODES; i++)); do
    local dir; dir="$(node_dir "$i")"
    if pid_alive "$dir/kafka.pid"; then
      pids+=("$(head -n1 "$dir/kafka.pid")"); kill "${pids[-1]}"
    else
      log "$(node_name "$i"): not running"
    fi
  done
  ((${#pids[@]})) || return 0
  for _ in $(seq 1 300); do
    local alive=0; for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || break; sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && kill -9 "$pid"; done
  for ((i = 1; i <= KAFKA_NODES; i++)); do
    local dir; dir="$(node_dir "$i")"
    if [[ -f "$dir/kafka.pid" ]] && ! pid_alive "$dir/kafka.pid"; then
      rm -f "$dir/kafka.pid"; log "$(node_name "$i"): stopped"
    fi
  done
}
kafka_status() {
  local i rc=0
  for ((i = 1; i <= KAFKA_NODES; i++)); do
    local name; name="$(node_name "$i")"
    if pid_alive "$(node_dir "$i")/kafka.pid"; then printf '%-9s up    127.0.0.1:%s\n' "$name" "$(node_port "$i")"
    else printf '%-9s down\n' "$name"; rc=1; fi
  done
  return $rc
}

# ---------------------------------------------------------------- main
cmd="${1:-status}"; shift || true
services=("$@")
if ! ((${#services[@]})); then
  services=(postgres redis kafka)
  if [[ -n "${REDIS_SENTINELS:-}" ]] || { [[ "$cmd" != up ]] && sentinel_running; }; then services+=(sentinel); fi
fi
for s in "${services[@]}"; do
  [[ " postgres redis kafka sentinel " == *" $s "* ]] || die "unknown service $s: expected postgres, redis, kafka or sentinel"
done
case "$cmd" in
  up) for s in "${services[@]}"; do "${s}_up"; done ;;
  down) for ((i=${#services[@]}-1; i>=0; i--)); do "${services[i]}_down"; done ;;
  status) rc=0; for s in "${services[@]}"; do "${s}_status" || rc=1; done; exit $rc ;;
  brokers) kafka_bootstrap ;;
  *) die "usage: $0 up|down|status|brokers [postgres|redis|kafka|sentinel ...]" ;;
esac
