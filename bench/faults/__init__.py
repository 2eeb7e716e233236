"""The fault-injection suite: `.venv/bin/python bench/faults [SCENARIO ...] [options]`.

A stack of real processes (two vLLM simulators, one consumer each, one or two senders) on a RabbitMQ
node of the suite's own (loopback ports, its own data: the suite stops, SIGKILLs and restarts it),
an open-loop load (22 requests/s, 70 % streamed, 0.5-3 s answers; see `load.py` for how every request
is classified: ok, clear error, unclear failure), and one fault per scenario at t = 10 s. After the
load, the invariants are checked at +5 s and +20 s: no request in flight or waiting at any sender,
no lease held at any consumer, the model queue empty, every process alive (those the scenario killed
on purpose replaced). Results: a markdown table on stdout and every request in a JSON file.

Scenarios (`scenarios.py`): broker-restart, broker-kill, consumer-kill, replica-die, replica-kill,
disconnect-storm, token-db-outage, replica-stall, sender-kill, upgrade-old-sender,
upgrade-new-sender. `--short` runs the few that the test suite runs too
(tests/e2e/test_faults_short.py), with a shorter load.

"Old" in the upgrade scenarios is the real previous release: the commit before PROTOCOL_VERSION took
its current value, unpacked from this checkout's history (`git archive`) and run from there
(PYTHONPATH + PYTHONSAFEPATH), with its own token database (it has fewer migrations).

Needs rabbitmq-server on the machine; token-db-outage needs the PostgreSQL of LLMD_TEST_POSTGRES_URL;
the upgrade scenarios need this checkout's git history (the release before the current protocol
version is unpacked from it with `git archive`).
"""
