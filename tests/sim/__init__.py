"""Simulator tier: the development vLLM simulator (`vllm_sim/`, not part of the product) on its own, on
loopback sockets and as a subprocess: its HTTP surface, load model, metrics and fault injection. Needs no
external service; timing-sensitive, so it is kept apart from the unit tier. Run:
`.venv/bin/python -m pytest tests/sim` (or `-m sim`, which also selects the simulator's half of the
contract suite in tests/real_vllm)."""
