#!/bin/sh
# After every worker of a run crashed: start one fresh worker on the same app/topics, wait, then run the oracle.
# Usage: restart_one.sh SPIKE_ID GUARANTEE SECONDS
cd "$(dirname "$0")"
D=$(ls -d runs/*-$1)
SPIKE_ID=$1 WORKER=w9 SPIKE_GUARANTEE=$2 /tmp/faustvenv/bin/python spike_app.py worker -l info --web-port 16999 > $D/w9.log 2>&1 &
P=$!
sleep $3
/tmp/faustvenv/bin/python oracle.py $1 5000 | cut -c1-400
grep -E "Worker\]: Ready|Crashed" $D/w9.log | cut -c1-200
kill -TERM $P; sleep 5; kill -0 $P 2>/dev/null && kill -KILL $P
