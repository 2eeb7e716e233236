"""End-to-end tier: a whole dispatcher over real sockets (sender, consumers, vLLM simulators, the real
RabbitMQ), talked to as a client would, with httpx, raw sockets or the official `openai` client: errors,
scheduling, balancing, leases, broker failures (connections closed, a private node SIGKILLed), the real
entry points as processes, hostile requests, and every command the documentation gives. Needs RabbitMQ
(`LLMD_TEST_AMQP_URL`; `rabbitmqctl` / `rabbitmq-server` for the broker-failure tests, skipped without).
Run: `.venv/bin/python -m pytest tests/e2e` (or `-m e2e`); minutes."""
