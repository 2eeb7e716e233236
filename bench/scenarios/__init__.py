"""Scheduling scenarios: the same offered load straight to vLLM (FIFO), straight to vLLM with
`--scheduling-policy priority`, and through llm-dispatcher, side by side in one run.

    .venv/bin/python bench/scenarios 1 2 3 4 [--duration 40] [--json results.json] [--img docs/img]
    .venv/bin/python bench/scenarios 5            # real vLLM on CPU (LLMD_REAL_VLLM_URL or port 18041)

1 priority under overload · 2 goodput at saturation · 3 uneven replicas · 4 per-user speed floor ·
5 real engine. Every arm starts fresh processes (simulators, consumers, sender) on loopback against
the local RabbitMQ; the load generator (bench/loadgen.py) runs in this process. A markdown report is
printed; PNG plots go to --img.

Modules: ``run`` (arms and running one), ``sampling`` (the replicas' metrics every 100 ms), ``stats``
(percentiles per class, engine throughput, idle time), ``report`` (markdown tables), ``plots`` (PNGs),
``suite`` (the five scenarios), ``__main__`` (the command line).
"""
