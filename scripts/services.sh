#!/usr/bin/env bash
# Installs (when missing), starts, stops and reports the project's own PostgreSQL, Redis and Kafka on loopback.
# Idempotent: `up` leaves running services alone; `down` stops only the processes this script started
# (tracked by pid files under .data/).
#   scripts/services.sh up|down|status [postgres|redis|kafka|sentinel ...]
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
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx768m}"
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
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$REDIS_DIR" --daemonize yes \
    --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log" \
    --appendonly yes --appendfsync everysec --maxmemory-policy noeviction --save "" --protected-mode yes
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

# ---------------------------------------------------------------- Kafka (KRaft, single node)
KAFKA_DIR="$DATA/kafka"
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
kafka_config() {
  cat > "$KAFKA_DIR/server.properties" <<PROPS
# Generated by scripts/services.sh; edit the script, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL
log.dirs=$KAFKA_DIR/logs
num.partitions=3
# Topics are created explicitly (manage.py ensure_topics); a typo in a rule must never create one.
auto.create.topics.enable=false
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=168
PROPS
}
kafka_up() {
  kafka_fetch
  mkdir -p "$KAFKA_DIR"
  if pid_alive "$KAFKA_DIR/kafka.pid"; then log "kafka: already running on 127.0.0.1:$KAFKA_PORT"; return; fi
  kafka_config
  if [[ ! -f "$KAFKA_DIR/logs/meta.properties" ]]; then
    local cluster_id; cluster_id="$(kafka_java kafka.tools.StorageTool random-uuid)"
    kafka_java kafka.tools.StorageTool format -t "$cluster_id" -c "$KAFKA_DIR/server.properties" >/dev/null \
      || die "kafka: storage format failed"
    log "kafka: formatted storage (cluster $cluster_id)"
  fi
  : > "$KAFKA_DIR/server.log"
  nohup java $KAFKA_HEAP_OPTS -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$ROOT/kafka/log4j2.properties" -Dkafka.logs.dir="$KAFKA_DIR" \
    -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_DIR/server.properties" > "$KAFKA_DIR/stdout.log" 2>&1 &
  echo $! > "$KAFKA_DIR/kafka.pid"
  if ! "$PYTHON" "$ROOT/scripts/wait_kafka.py" "127.0.0.1:$KAFKA_PORT" --timeout 60 --pid "$(cat "$KAFKA_DIR/kafka.pid")"; then
    echo "----- tail of $KAFKA_DIR/server.log -----" >&2; tail -n 40 "$KAFKA_DIR/server.log" >&2 || true
    echo "----- tail of $KAFKA_DIR/stdout.log -----" >&2; tail -n 20 "$KAFKA_DIR/stdout.log" >&2 || true
    die "kafka did not answer a metadata request on 127.0.0.1:$KAFKA_PORT within 60 s"
  fi
  log "kafka: started on 127.0.0.1:$KAFKA_PORT"
}
kafka_down() {
  if pid_alive "$KAFKA_DIR/kafka.pid"; then
    local pid; pid="$(head -n1 "$KAFKA_DIR/kafka.pid")"
    kill "$pid"
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    rm -f "$KAFKA_DIR/kafka.pid"
    log "kafka: stopped"
  else
    log "kafka: not running"
  fi
}
kafka_status() {
  if pid_alive "$KAFKA_DIR/kafka.pid"; then echo "kafka     up    127.0.0.1:$KAFKA_PORT"; else echo "kafka     down"; return 1; fi
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
  *) die "usage: $0 up|down|status [postgres|redis|kafka|sentinel ...]" ;;
esac
