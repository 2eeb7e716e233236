"""Scheduling scenarios: the same offered load straight to vLLM (FIFO), straight to vLLM with
`--scheduling-policy priority`, and through llm-dispatcher, side by side in one run.

    .venv/bin/python bench/scenarios 1 2 3 4 [--duration 40] [--json results.json] [--img docs/img]
    .venv/bin/python bench/scenarios 5            # real vLLM on CPU (LLMD_REAL_VLLM_URL or port 18041)
    .venv/bin/python bench/scenarios 6            # interactive at ~60 % plus a 2,000-line batch (Batch API)

1 priority under overload · 2 goodput at saturation · 3 uneven replicas · 4 per-user speed floor ·
5 real engine · 6 a batch beside interactive traffic (its own arms: see ``batch``). Every arm starts
fresh processes (simulators, consumers, sender) on loopback against the local RabbitMQ; the load
generator (bench/loadgen.py) runs in this process. A markdown report is
printed; PNG plots go to --img.

Modules: ``run`` (arms and running one), ``sampling`` (the replicas' metrics every 100 ms), ``stats``
(percentiles per class, engine throughput, idle time), ``report`` (markdown tables), ``plots`` (PNGs),
``batch`` (scenario 6), ``suite`` (the six scenarios), ``__main__`` (the command line).
"""
