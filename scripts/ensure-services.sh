#!/usr/bin/env bash
# Checks that RabbitMQ, PostgreSQL, MariaDB and Redis answer on loopback; starts any that is down.
set -u

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {  # name port seconds
	local i
	for ((i = 0; i < $3 * 2; i++)); do
		answers "$2" && { echo "ensure-services: $1 answers on 127.0.0.1:$2"; return 0; }
		sleep 0.5
	done
	echo "ensure-services: $1 does not answer on 127.0.0.1:$2" >&2
	return 1
}

start_if_down() {  # name port command...
	local name=$1 port=$2
	shift 2
	if answers "$port"; then
		echo "ensure-services: $name answers on 127.0.0.1:$port"
		return 0
	fi
	echo "ensure-services: starting $name"
	"$@" >/dev/null 2>&1 || true
	wait_for "$name" "$port" 60
}

rc=0
start_if_down RabbitMQ 5672 rabbitmq-server -detached || rc=1
start_if_down PostgreSQL 5432 bash -c 'pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start' || rc=1
start_if_down MariaDB 3306 start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || rc=1
start_if_down Redis 6379 redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' || rc=1
exit $rc
